"""The Beam build's tests run in their own venv (requirements-beam.txt, scripts/test.sh).

They share the video fixtures and the GCS server of tests/ (test-time encoded clips).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import gcs_emulator  # noqa: E402
from gcs_emulator import gcs  # noqa: E402,F401  (the session fixture)

os.environ.update(gcs_emulator.OFFLINE_CREDENTIALS)

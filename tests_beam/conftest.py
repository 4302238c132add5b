"""The Beam build's tests run in their own venv (requirements-beam.txt, scripts/test.sh).

They share the video fixtures of tests/ (test-time encoded clips).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

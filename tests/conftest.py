"""Test setup: 8 emulated CPU devices, a compilation cache, parsed absl flags, offline GCS clients.

The environment must be set before jax is imported anywhere, so this runs first.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import gcs_emulator  # noqa: E402
from gcs_emulator import gcs  # noqa: E402,F401  (the session fixture)
os.environ.update(gcs_emulator.OFFLINE_CREDENTIALS)

import jax  # noqa: E402
from absl import flags  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Grain reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()

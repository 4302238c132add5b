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

# Files that take minutes, slowest first. They are collected first, so that with two test
# processes (scripts/test.sh, whole files per process) the short files fill in around them
# instead of one process finishing a slow file alone at the end.
SLOW_FILES = ("test_demo_recipe.py", "test_pod_training.py", "test_multiprocess.py",
              "test_preemption.py", "test_accelerator_benchmark.py", "test_gcs.py", "test_cli.py",
              "test_aot.py", "test_gradcam.py", "test_checkpointing.py", "test_repeatability.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # Stable: file order kept.

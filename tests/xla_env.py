"""XLA settings for test subprocesses whose results are not compared with the test process.

The CLI smoke test runs tiny models whose cost is almost all compilation, so the backend's
expensive optimisation passes are switched off there. In-process tests keep the default
flags: equivalence tests (8 devices vs 1, 2 processes vs 1) compare summation orders, and the
unoptimised backend's round-off is larger than their tolerances.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def join_cpu_job(port: int, process_id: int, cache_dir: str, devices: int = 2) -> None:
  """Makes this fresh process one of two CPU processes of a job on 127.0.0.1:`port`, each with
  `devices` devices and the suite's compilation cache; absl flags count as parsed (grain reads
  them)."""
  import jax  # pylint: disable=g-import-not-at-top  (the caller's process must not import it first)
  jax.config.update("jax_num_cpu_devices", devices)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                             heartbeat_timeout_seconds=10)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()

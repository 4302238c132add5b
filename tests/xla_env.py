"""XLA settings for test subprocesses whose results are not compared with the test process.

The CLI smoke test runs tiny models whose cost is almost all compilation, so the backend's
expensive optimisation passes are switched off there. In-process tests keep the default
flags: equivalence tests (8 devices vs 1, 2 processes vs 1) compare summation orders, and the
unoptimised backend's round-off is larger than their tolerances.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"

"""Per-chip TPU and GPU specs and the arithmetic behind `fstfl_jax.tools.aot`'s estimates.

Peak bf16 FLOP/s, HBM bandwidth and HBM capacity per chip, as published in Google's Cloud TPU
system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), and for NVIDIA GPUs
from `gpu_targets.GPUS` (NVIDIA's datasheets; dense bf16 tensor-core peaks). A step estimate is
the roofline max(FLOPs / peak, bytes / bandwidth): it assumes perfect overlap of compute and
memory traffic and ignores collectives and launch gaps, so real steps are slower.
`max_batch` finds the largest batch that fits in few compiles.
"""

import dataclasses
from collections.abc import Callable

from fstfl_jax.tools import gpu_targets


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  peak_flops: float      # bf16 FLOP/s per chip.
  hbm_bandwidth: float   # Bytes/s per chip.
  hbm_bytes: float       # HBM capacity per chip, bytes.


# Keys are the generation prefixes of `jax.experimental.topologies` names ("v5e:2x2") and the
# GPU kinds of `gpu_targets.parse_topology` ("h100:1x8").
CHIPS = {
  "v4": ChipSpec(peak_flops=275e12, hbm_bandwidth=1200e9, hbm_bytes=32 * 2**30),
  "v5e": ChipSpec(peak_flops=197e12, hbm_bandwidth=819e9, hbm_bytes=16e9),
  "v5p": ChipSpec(peak_flops=459e12, hbm_bandwidth=2765e9, hbm_bytes=95e9),
  "v6e": ChipSpec(peak_flops=918e12, hbm_bandwidth=1640e9, hbm_bytes=32e9),
  # The same numbers the GPU compiler is told.
  **{kind: ChipSpec(peak_flops=gpu.peak_bf16_flops, hbm_bandwidth=gpu.memory_bandwidth,
                    hbm_bytes=gpu.device_memory_bytes) for kind, gpu in gpu_targets.GPUS.items()},
}


def chip_spec(topology: str) -> ChipSpec:
  """The spec of the chip named before the ':' of a topology ("v6e:2x2" -> v6e, "h100:1x8")."""
  generation = topology.split(":")[0]
  if generation not in CHIPS:
    raise ValueError(f"No chip spec for topology {topology!r}: expected a name starting with "
                     f"one of {sorted(CHIPS)} and a shape, e.g. 'v5e:2x2'.")
  return CHIPS[generation]


def roofline(flops: float, bytes_accessed: float, chip: ChipSpec) -> dict[str, float | str]:
  """Roofline step time of one chip doing `flops` and moving `bytes_accessed` through HBM.

  Returns compute_seconds, memory_seconds, step_seconds (their max), bound ("compute" or
  "memory") and arithmetic_intensity (FLOP per byte).
  """
  compute = flops / chip.peak_flops
  memory = bytes_accessed / chip.hbm_bandwidth
  return dict(compute_seconds=compute, memory_seconds=memory, step_seconds=max(compute, memory),
              bound="compute" if compute >= memory else "memory",
              arithmetic_intensity=flops / bytes_accessed if bytes_accessed else float("inf"))


def mfu(flops: float, step_seconds: float, chip: ChipSpec) -> float:
  """Fraction of the chip's peak FLOP/s that `flops` per `step_seconds` uses."""
  return flops / (step_seconds * chip.peak_flops)


def throughput(clips_per_chip: int, num_chips: int, step_seconds: float) -> dict[str, float]:
  """Clips per second per chip and for the whole slice at one step per `step_seconds`."""
  per_chip = clips_per_chip / step_seconds
  return dict(clips_per_sec_per_chip=per_chip, clips_per_sec_per_slice=per_chip * num_chips)


def max_batch(hbm: Callable[[int], float | None], capacity: float,
              known: dict[int, float], limit: int = 4096) -> int:
  """Largest n in [1, limit] whose train step fits in `capacity` bytes of HBM per chip.

  Args:
    hbm: n -> the compiled step's HBM bytes per chip, or None when the compiler runs out.
    capacity: the chip's HBM bytes.
    known: points already measured, n -> bytes; at least {0: bytes that do not grow with n}.
    limit: largest n tried.
  Memory grows about linearly with the batch, so each guess is where the line through the two
  largest fitting points meets `capacity` (one compile when that holds, and one more to see the
  next n fail); after a guess that did not fit, the next one bisects, so a curved memory profile
  costs O(log n) compiles. A compile of a full model takes minutes: few calls matter.
  """
  points = {n: b for n, b in known.items() if b <= capacity}
  if 0 not in points:
    return 0
  good = max(points)
  bad = min([n for n in known if n not in points] + [limit + 1])
  bisect = good == 0
  while bad - good > 1:
    n = (good + bad) // 2
    if not bisect:
      lo, hi = sorted(points)[-2:]
      slope = max((points[hi] - points[lo]) / (hi - lo), 1.0)
      n = min(max(good + int((capacity - points[good]) // slope), good + 1), bad - 1)
    used = hbm(n)
    bisect = used is None or used > capacity
    if bisect:
      bad = n
    else:
      good, points[n] = n, used
  return good

"""Per-chip TPU specs and the roofline arithmetic behind `fstfl_jax.tools.aot`'s estimates.

Peak bf16 FLOP/s, HBM bandwidth and HBM capacity per chip, as published in Google's Cloud TPU
system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e). A step estimate is
the roofline max(FLOPs / peak, bytes / bandwidth): it assumes perfect overlap of compute and
memory traffic and ignores collectives and launch gaps, so real steps are slower.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  peak_flops: float      # bf16 FLOP/s per chip.
  hbm_bandwidth: float   # Bytes/s per chip.
  hbm_bytes: float       # HBM capacity per chip, bytes.


# Keys are the generation prefixes of `jax.experimental.topologies` names ("v5e:2x2").
CHIPS = {
  "v4": ChipSpec(peak_flops=275e12, hbm_bandwidth=1200e9, hbm_bytes=32 * 2**30),
  "v5e": ChipSpec(peak_flops=197e12, hbm_bandwidth=819e9, hbm_bytes=16e9),
  "v5p": ChipSpec(peak_flops=459e12, hbm_bandwidth=2765e9, hbm_bytes=95e9),
  "v6e": ChipSpec(peak_flops=918e12, hbm_bandwidth=1640e9, hbm_bytes=32e9),
}


def chip_spec(topology: str) -> ChipSpec:
  """The spec of the generation named before the ':' of a topology ("v6e:2x2" -> v6e)."""
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

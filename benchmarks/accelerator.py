r"""One command that measures an accelerator: train steps, correlation kernels, host input rate.

  python -m benchmarks.accelerator --json accelerator.json          # on a TPU VM or a GPU host
  python -m benchmarks.accelerator --tiny --json accelerator.json   # any CPU, in seconds

On whatever backend JAX finds, nothing installed or downloaded:

1. The real jitted train step (`training.steps`, donated state, SyncBN) of tsn, gsf and fstfl,
   bf16, 8 frames at 224x224 (Something-Something V1's 174 classes), at the largest per-device
   batch of the paper's recipe that fits: its 32-clip batch split over the devices (at least 1
   clip each), halved while the compiler runs out of memory. Per model: `step_seconds` (median of
   the timed steps), `clips_per_second`, `peak_memory_bytes` (the device's own peak when it
   reports one, else the compiler's argument + temporary bytes: `peak_memory_source`), `mfu`
   (the step's FLOPs per device over step time x the chip's peak bf16 FLOP/s, from
   `tools/roofline.py`; null where the peak is unknown, e.g. on CPU).
2. Each correlation kernel (`models.correlation`: allpairs, banded, einsum) at res3 (28x28x512,
   D=6, offsets 0..3), forward + backward, on one device's clips.
3. The input pipeline's clips/s on this host (`data_pipelines.pipeline` over a synthetic data dir
   of 256x340 JPEG frames, as the build stores them) next to the clips/s this host's devices
   consume in the fastest train step: `input_keeps_up` says whether the host would feed them.

`--tiny` shrinks everything (width 8, 32x32, 4 frames, one clip per device) so the command runs
on a CPU in CI and
never rots. Read the output: `step_seconds` and `mfu` per model, fstfl/gsf and gsf/tsn ratios,
the kernel rows against each other, and `input_keeps_up`.
"""

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks import correlation as correlation_bench
from benchmarks import pod_data
from configs import sthv1
from data_pipelines import cli
from data_pipelines import pipeline
from data_pipelines import storage
from fstfl_jax.models import build_model
from fstfl_jax.models import correlation
from fstfl_jax.tools import gpu_targets
from fstfl_jax.tools import host_cost
from fstfl_jax.tools import roofline
from fstfl_jax.training import sharding
from fstfl_jax.training import steps
from fstfl_jax.training import train

PROG = "benchmarks.accelerator"
MODELS = ("tsn", "gsf", "fstfl")
PAPER_BATCH = 32
# `jax.Device.device_kind` of TPUs -> the chip names of `roofline.CHIPS`.
TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5p": "v5p",
             "TPU v5": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
_OOM = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory", "exceeds the memory")


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def chip(device: jax.Device) -> roofline.ChipSpec | None:
  """The roofline spec of `device`, or None for a device whose peak is not known (CPU)."""
  name = TPU_KINDS.get(device.device_kind)
  if name is None:
    name = next((k for k, g in gpu_targets.GPUS.items() if g.description == device.device_kind),
                None)
  return roofline.CHIPS.get(name) if name else None


def model_config(name: str, tiny: bool):
  config = sthv1.get_config(f"model={name},frames={4 if tiny else 8}")
  config.model.dtype = "bfloat16"
  config.train.num_train_examples = PAPER_BATCH  # Only the lr schedule reads it.
  if tiny:
    config.model.update(width=8, stage_sizes=(1, 1, 1, 1))
    config.model.stc.max_disp = 1
    config.input.crop_size = 32
  return config


def _flops(lowered: Any, compiled: Any, devices: int) -> float | None:
  cost = compiled.cost_analysis()
  if cost is None:  # The CUDA plugin: count on the host.
    cost = host_cost.host_cost_analysis(lowered, compiled, devices)
  return float(cost["flops"]) if cost and cost.get("flops", -1) > 0 else None


def measure_step(name: str, per_device: int, tiny: bool, timed: int) -> dict[str, Any]:
  """Compiles and times one model's train step; raises on a compiler out-of-memory error."""
  config = model_config(name, tiny)
  mesh = sharding.make_mesh()
  batch = per_device * mesh.size
  config.input.batch_size = batch
  model = build_model(config.model)
  tx, schedule, init_fn, abstract = train.build(config, model, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  jitted = steps.jit_train_step(steps.make_train_step(model, tx, schedule), mesh, state_sharding)
  size, frames = config.input.crop_size, config.model.num_frames
  rng = np.random.default_rng(0)
  local = batch // jax.process_count()
  with jax.set_mesh(mesh):
    state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.PRNGKey(0))
    data = sharding.to_global(dict(
      video=rng.integers(0, 256, (local, frames, size, size, 3), dtype=np.uint8),
      label=rng.integers(0, config.model.num_classes, (local,), dtype=np.int32)), mesh)
    started = time.perf_counter()
    lowered = jitted.lower(state, data)
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - started
    times = []
    for i in range(timed + 2):  # Two untimed steps: buffer allocation, caches.
      started = time.perf_counter()
      state, metrics = compiled(state, data)
      jax.block_until_ready(metrics)
      if i >= 2:
        times.append(time.perf_counter() - started)
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  memory = compiled.memory_analysis()
  if "peak_bytes_in_use" in stats:
    peak, source = stats["peak_bytes_in_use"], "device"
  else:
    peak, source = memory.argument_size_in_bytes + memory.temp_size_in_bytes, "compiler"
  step = statistics.median(times)
  flops = _flops(lowered, compiled, mesh.size)
  spec = chip(device)
  return dict(model=name, per_device_batch=per_device, global_batch=batch, frames=frames,
              size=size, compile_seconds=compile_seconds, step_seconds=step,
              clips_per_second=batch / step, peak_memory_bytes=int(peak),
              peak_memory_source=source, flops_per_device_step=flops,
              mfu=flops / (step * spec.peak_flops) if flops and spec else None,
              loss=float(metrics["loss"]))


def largest_fitting(name: str, tiny: bool, timed: int) -> dict[str, Any]:
  """`measure_step` at the paper's per-device share of its batch, halved until it fits (one
  clip per device with `tiny`)."""
  per_device = 1 if tiny else max(1, PAPER_BATCH // jax.device_count())
  while True:
    _log(f"{name}: {per_device} clips per device")
    try:
      return measure_step(name, per_device, tiny, timed)
    except Exception as e:  # pylint: disable=broad-except  (XLA raises its own types)
      if per_device == 1 or not any(m in str(e) for m in _OOM):
        raise
      per_device //= 2


def measure_kernels(clips: int, tiny: bool, dtype: str = "bfloat16") -> list[dict[str, Any]]:
  """Forward + backward of each correlation kernel at res3, on one device."""
  size, channels, disp = (8, 64, 1) if tiny else (28, 512, 6)
  shape = (clips, 4 if tiny else 8, size, size, channels)
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape)).astype(jnp.dtype(dtype))
  k = (2 * disp + 1) ** 2
  w = jax.random.normal(jax.random.key(1), (k, correlation_bench.MLP_WIDTH)) / np.sqrt(k)
  rows = []
  for impl in ("allpairs", "banded", "einsum"):
    corr = functools.partial(correlation.correlate, max_disp=disp, offsets=(0, 1, 2, 3),
                             impl=impl)

    def loss(x, w, corr=corr):
      return jnp.sum(jax.nn.relu(corr(x).astype(jnp.float32) @ w))

    _log(f"correlation {impl}")
    row = correlation_bench.measure_fn(jax.grad(loss, argnums=(0, 1)), (x, w), repeats=3,
                                       max_run_gib=float("inf"))
    rows.append(dict(impl=impl, shape=list(shape), max_disp=disp, mode="fwd+bwd", **row))
  return rows


def measure_input(clips_per_batch: int, tiny: bool, batches: int) -> dict[str, Any]:
  """This host's input pipeline on a synthetic data dir: clips/s over `batches` batches."""
  with tempfile.TemporaryDirectory() as data_dir:
    pod_data.synthetic_data(data_dir, videos=16 if tiny else 64, frames=24 if tiny else 48)
    cfg = model_config("fstfl", tiny).input
    cfg.update(data_dir=data_dir, batch_size=clips_per_batch, flip="flip")
    it = pipeline.make_train_iter(cfg)
    next(it)  # Starts the reader threads.
    started = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - started
  threads, workers = pipeline.host_parallelism(cfg)
  return dict(clips_per_second=batches * clips_per_batch / seconds, threads=threads,
              workers=workers, cores=len(os.sched_getaffinity(0)))


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `python -m benchmarks.accelerator` (see the module docstring)."""
  flags.DEFINE_bool("tiny", False, "A tiny model and input, to check the command on a CPU.",
                    flag_values=fv)
  flags.DEFINE_list("models", list(MODELS), "Models whose train step is measured.",
                    flag_values=fv)
  flags.DEFINE_integer("steps", 5, "Timed train steps per model (the median is kept).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("input_batches", 8, "Batches the input pipeline is timed over.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the report here (local path or gs://).",
                      flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  unknown = sorted(set(args.models) - set(MODELS))
  if unknown:
    cli.usage_error(PROG, f"--models {unknown}: expected some of {list(MODELS)}")
  device = jax.devices()[0]
  _log(f"{jax.default_backend()}: {jax.device_count()} x {device.device_kind}, "
       f"{jax.process_count()} process(es)")
  models = {name: largest_fitting(name, args.tiny, args.steps) for name in args.models}
  per_device = min(m["per_device_batch"] for m in models.values())
  kernels = measure_kernels(per_device, args.tiny)
  fastest = max(m["clips_per_second"] for m in models.values()) / jax.process_count()
  inputs = measure_input(max(1, PAPER_BATCH // jax.process_count()) if not args.tiny else 8,
                         args.tiny, args.input_batches)
  inputs.update(step_clips_per_second=fastest,
                input_keeps_up=inputs["clips_per_second"] >= fastest)
  report = dict(backend=jax.default_backend(), device_kind=device.device_kind,
                devices=jax.device_count(), processes=jax.process_count(), tiny=args.tiny,
                models=models, correlation=kernels, input_pipeline=inputs)
  for name, m in models.items():
    mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
    print(f"{name}: {m['per_device_batch']} clips/device, step {1e3 * m['step_seconds']:.1f} ms, "
          f"{m['clips_per_second']:.1f} clips/s, peak {m['peak_memory_bytes'] / 2**30:.2f} GiB "
          f"({m['peak_memory_source']}), MFU {mfu}")
  for row in kernels:
    print(f"correlation {row['impl']}: {row.get('time_ms', float('nan')):.1f} ms fwd+bwd")
  print(f"input pipeline: {inputs['clips_per_second']:.1f} clips/s on {inputs['cores']} cores "
        f"vs {fastest:.1f} clips/s consumed per host: "
        f"{'keeps up' if inputs['input_keeps_up'] else 'the host is the bottleneck'}")
  if args.json:
    storage.write_text(args.json, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

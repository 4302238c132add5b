"""Train-step cost of tsn, gsf and fstfl at the same size, measured in one run.

  python -m benchmarks.train_step [--clips 2 --frames 8 --size 224 --repeats 3 --json out.json]

For each model: the jitted data-parallel train step of `fstfl_jax.training.steps` (SGD, the real
loss, BN updates, donated state) on a random uint8 batch; compile time, best-of-N step time,
clips/s, and XLA's peak temporary memory of the compiled step
(`memory_analysis().temp_size_in_bytes`).
The ratios fstfl/gsf and gsf/tsn are the cost of STC and of GSF on this backend.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from configs import sthv1
from data_pipelines import cli
from fstfl_jax.models import build_model
from fstfl_jax.training import sharding
from fstfl_jax.training import steps
from fstfl_jax.training import train

MODELS = ("tsn", "gsf", "fstfl")


def measure(name: str, clips: int, frames: int, size: int, repeats: int) -> dict:
  config = sthv1.get_config(f"model={name},frames={frames}")
  config.input.batch_size = clips
  config.input.crop_size = size
  mesh = sharding.make_mesh()
  model = build_model(config.model)
  tx, schedule, init_fn, abstract = train.build(config, model, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = steps.jit_train_step(
    steps.make_train_step(model, tx, schedule), mesh, state_sharding)
  rng = np.random.default_rng(0)
  batch = sharding.to_global(dict(
    video=rng.integers(0, 256, (clips, frames, size, size, 3), dtype=np.uint8),
    label=rng.integers(0, config.model.num_classes, (clips,), dtype=np.int32)), mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  times = []
  for _ in range(repeats + 1):  # The first call also pays for buffer allocation.
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  best = min(times[1:]) if repeats else times[0]
  return dict(model=name, clips=clips, frames=frames, size=size, compile_s=compile_s,
              step_s=best, clips_per_s=clips / best,
              temp_gib=memory.temp_size_in_bytes / 2**30 if memory else float("nan"),
              loss=float(metrics["loss"]))


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("clips", 2, "Clips per step.", flag_values=fv)
  flags.DEFINE_integer("frames", 8, "Frames per clip.", flag_values=fv)
  flags.DEFINE_integer("size", 224, "Crop size.", flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "Timed steps per model (best is kept).", flag_values=fv)
  flags.DEFINE_list("models", list(MODELS), "Models to measure.", flag_values=fv)
  flags.DEFINE_string("json", "", "Also write rows and ratios here.", flag_values=fv)


def main() -> None:
  args = cli.parse_flags(None, define_flags, prog="benchmarks.train_step", doc=__doc__)

  rows = [measure(m, args.clips, args.frames, args.size, args.repeats)
          for m in args.models]
  by = {r["model"]: r for r in rows}
  print(f"backend={jax.default_backend()} devices={jax.device_count()} "
        f"batch={args.clips}x{args.frames}x{args.size}^2")
  print("| model | step (s) | clips/s | peak temp (GiB) | compile (s) |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['model']} | {r['step_s']:.2f} | {r['clips_per_s']:.3f} | {r['temp_gib']:.2f} | "
          f"{r['compile_s']:.1f} |")
  ratios = {}
  for a, b, target in (("gsf", "tsn", 1.15), ("fstfl", "gsf", 1.10)):
    if a in by and b in by:
      r = by[a]["step_s"] / by[b]["step_s"]
      ratios[f"{a}/{b}_time"] = r
      print(f"{a}/{b} step time: {r:.3f}x (target <= {target}x)")
  if "fstfl" in by and "gsf" in by:
    r = by["fstfl"]["temp_gib"] / by["gsf"]["temp_gib"]
    ratios["fstfl/gsf_memory"] = r
    print(f"fstfl/gsf peak memory: {r:.3f}x (target <= 1.1x)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, ratios=ratios, backend=jax.default_backend()), f, indent=1)


if __name__ == "__main__":
  jnp.zeros(())  # Initialise the backend before timing anything.
  main()

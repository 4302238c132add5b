"""Correlation kernels: time and XLA temp memory per implementation, next to a GSF-R50 train step.

  python -m benchmarks.correlation                  # res3 default: 8 clips x 8 frames, 28x28x512
  python -m benchmarks.correlation --clips 1 --disp 6 --disp 14 --json out.json

For every implementation of `fstfl_jax.models.correlation.correlate` and every D in --disp:
forward (S) and forward+backward (grad of sum(relu(S @ W1)), W1 [K, 16], w.r.t. x and W1, like
the MLP layer that follows in the STC). Reported: compile time, peak temp memory from
`compile().memory_analysis().temp_size_in_bytes` (arguments and outputs excluded) and the best of
--repeats runs after compilation. A kernel whose temp memory exceeds --max_run_gib is compiled
but not run; the unrolled "loop" is not even compiled beyond --max_unrolled displacement slices
(XLA:CPU takes minutes, and it would need tens of GiB). Then a GSF-ResNet-50 SGD train step on
the same batch (clips x frames at 224x224; --gsf_clips runs fewer and scales the time) and the
targets: default-kernel fwd+bwd <= 10% of that step and <= 2 GiB temp memory. Timings on a
shared machine are noisy: compare rows of one run.
"""

import functools
import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from data_pipelines import cli
from fstfl_jax.models import correlation

GIB = 2.0 ** 30
MLP_WIDTH = 16


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("clips", 8, "Clips in the batch.", flag_values=fv)
  flags.DEFINE_integer("frames", 8, "Frames per clip.", flag_values=fv)
  flags.DEFINE_integer("size", 28, "H = W of the correlated feature map.", flag_values=fv)
  flags.DEFINE_integer("channels", 512, "Channels of the feature map.", flag_values=fv)
  flags.DEFINE_multi_integer("disp", [6, 14], "Values of D (repeat the flag).", flag_values=fv)
  flags.DEFINE_multi_integer("offsets", [0, 1, 2, 3], "Temporal offsets (repeat the flag).",
                             flag_values=fv)
  flags.DEFINE_multi_enum("impls", list(correlation.IMPLS), correlation.IMPLS,
                          "Implementations (repeat the flag).", flag_values=fv)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.", flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "Timed runs per kernel (best is kept).", flag_values=fv)
  flags.DEFINE_float("max_run_gib", 6.0, "Do not run kernels needing more temp memory than this.",
                     flag_values=fv)
  flags.DEFINE_integer("max_unrolled", 200, "Do not compile the loop when it unrolls more "
                       "(offset, displacement) slices.", flag_values=fv)
  flags.DEFINE_integer("gsf_clips", None, "Clips in the GSF step (default --clips); its time is "
                       "scaled to --clips.", flag_values=fv)
  flags.DEFINE_integer("gsf_repeats", 2, "Timed GSF steps.", flag_values=fv)
  flags.DEFINE_bool("skip_gsf", False, "Skip the GSF-ResNet-50 step.", flag_values=fv)
  flags.DEFINE_string("json", None, "Also write all rows to this JSON file.", flag_values=fv)


def _unrolled_slices(impl: str, max_disp: int, num_offsets: int) -> int:
  """Slices an unrolled kernel puts in the graph (0: not unrolled)."""
  return (2 * max_disp + 1) ** 2 * num_offsets if impl == "loop" else 0


def measure_fn(fn: Callable, args: tuple, repeats: int, max_run_gib: float) -> dict:
  """Compiles fn(*args), reads its temp memory, and times it unless that memory is too large."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  row = {"compile_s": time.perf_counter() - start}
  analysis = compiled.memory_analysis()
  row["temp_gib"] = None if analysis is None else analysis.temp_size_in_bytes / GIB
  if row["temp_gib"] is not None and row["temp_gib"] > max_run_gib:
    row["note"] = f"not run: temp > {max_run_gib:g} GiB"
    return row
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  row["time_ms"] = 1e3 * min(times)
  return row


def bench_kernels(args: flags.FlagValues) -> list[dict]:
  dtype = jnp.dtype(args.dtype)
  shape = (args.clips, args.frames, args.size, args.size, args.channels)
  # Post-ReLU-like features, so some cosines are large and the norm sees real magnitudes.
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape, jnp.float32)).astype(dtype)
  offsets = tuple(args.offsets)
  rows = []
  for d in args.disp:
    k = (2 * d + 1) ** 2
    w1 = jax.random.normal(jax.random.key(1), (k, MLP_WIDTH), jnp.float32) / np.sqrt(k)
    for impl in args.impls:
      corr = functools.partial(correlation.correlate, max_disp=d, offsets=offsets, impl=impl)

      def loss(x, w1, corr=corr):
        return jnp.sum(jax.nn.relu(corr(x) @ w1))

      for mode, fn, fn_args in (("fwd", corr, (x,)),
                                ("fwd+bwd", jax.grad(loss, argnums=(0, 1)), (x, w1))):
        row = {"impl": impl, "D": d, "K": k, "mode": mode}
        slices = _unrolled_slices(impl, d, len(offsets))
        if slices > args.max_unrolled:
          row["note"] = f"not compiled: {slices} unrolled slices > --max_unrolled"
        else:
          _log(f"{impl} D={d} {mode}: compiling")
          row.update(measure_fn(fn, fn_args, args.repeats, args.max_run_gib))
        _log(f"{impl} D={d} {mode}: {row}")
        rows.append(row)
  return rows


def bench_gsf_step(args: flags.FlagValues) -> dict:
  """One SGD step (forward+backward) of GSF-ResNet-50 on clips x frames x 224 x 224 x 3."""
  import optax  # pylint: disable=g-import-not-at-top

  from configs.common import model_config  # pylint: disable=g-import-not-at-top
  from fstfl_jax.models import build_model  # pylint: disable=g-import-not-at-top

  clips = args.gsf_clips or args.clips
  cfg = model_config("gsf", 174, args.frames)
  cfg.dtype = args.dtype
  model = build_model(cfg)
  video = jax.random.normal(jax.random.key(2), (clips, args.frames, 224, 224, 3), jnp.float32)
  labels = jnp.arange(clips) % 174
  _log(f"GSF-R50 {clips}x{args.frames}x224: init")
  # Parameter shapes do not depend on the batch: one clip makes the init compile cheaper.
  variables = jax.jit(functools.partial(model.init, train=False))(
    {"params": jax.random.key(3), "dropout": jax.random.key(4)}, video[:1])
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(variables["params"])

  def step(params, batch_stats, opt_state, video, labels):
    def loss_fn(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, video, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.key(5)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  _log(f"GSF-R50 {clips}x{args.frames}x224: compiling the train step")
  row = measure_fn(step, (variables["params"], variables["batch_stats"], opt_state, video, labels),
                 args.gsf_repeats, max_run_gib=float("inf"))
  row.update(impl="gsf-r50 train step", mode="fwd+bwd", clips=clips)
  row["time_ms_per_batch"] = row["time_ms"] * args.clips / clips
  _log(f"GSF-R50: {row}")
  return row


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def report(args: flags.FlagValues, rows: list[dict], gsf: dict | None) -> str:
  default = correlation.resolve_impl("auto")
  lines = [
    f"Backend {jax.default_backend()}, {args.dtype}, x = [{args.clips}, {args.frames}, {args.size},"
    f" {args.size}, {args.channels}], offsets {tuple(args.offsets)}; 'auto' = {default}.", "",
    "| impl | D | K | pass | time (ms) | temp memory (GiB) | compile (s) | note |",
    "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['impl']} | {r['D']} | {r['K']} | {r['mode']} | "
                 f"{_fmt(r.get('time_ms'), ',.0f')} | {_fmt(r.get('temp_gib'), '.2f')} | "
                 f"{_fmt(r.get('compile_s'), '.1f')} | {r.get('note', '')} |")
  if gsf is not None:
    scaled = ("" if gsf["clips"] == args.clips else
              f" (run on {gsf['clips']} clips: time scaled by {args.clips / gsf['clips']:g}, "
              "memory as measured)")
    lines.append(f"| GSF-R50 train step, {args.frames}x224^2 | - | - | fwd+bwd | "
                 f"{gsf['time_ms_per_batch']:,.0f} | {_fmt(gsf['temp_gib'], '.2f')} | "
                 f"{gsf['compile_s']:.1f} | {args.clips} clips{scaled} |")
  lines.append("")
  for d in args.disp:
    train = next((r for r in rows if r["impl"] == default and r["D"] == d
                  and r["mode"] == "fwd+bwd"), None)
    if train is None:
      continue
    if gsf is not None and train.get("time_ms") is not None:
      ratio = train["time_ms"] / gsf["time_ms_per_batch"]
      lines.append(f"- D={d}: {default} fwd+bwd / GSF step = {100 * ratio:.1f}% "
                   f"(target <= 10%: {'met' if ratio <= 0.10 else 'NOT met'})")
    if train.get("temp_gib") is not None:
      lines.append(f"- D={d}: {default} fwd+bwd temp memory {train['temp_gib']:.2f} GiB "
                   f"(target <= 2 GiB: {'met' if train['temp_gib'] <= 2.0 else 'NOT met'})")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  args = cli.parse_flags(argv, define_flags, prog="benchmarks.correlation", doc=__doc__)
  rows = bench_kernels(args)
  gsf = None if args.skip_gsf else bench_gsf_step(args)
  print(report(args, rows, gsf))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": args.flag_values_dict(), "backend": jax.default_backend(), "kernels": rows,
                 "gsf_step": gsf}, f, indent=2)


if __name__ == "__main__":
  main(sys.argv[1:])

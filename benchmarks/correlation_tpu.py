r"""Correlation kernels compiled for TPU (no TPU needed): compiler FLOPs, bytes, HBM, roofline.

  python -m benchmarks.correlation_tpu --topology v5e:2x2 --json out.json

For every STC placement of the paper's Table 6 (res2..res5 at 224x224: 56^2x256, 28^2x512,
14^2x1024, 7^2x2048), the default D=6 and the paper-literal D=ceil(X/2), and every kernel,
compiles forward+backward of sum(relu(S @ W1)) (W1 [K, 16], the STC's first MLP layer) over
--clips clips per chip of --frames frames, sharded on clips as in training, and reports the TPU
compiler's per-chip FLOPs, bytes accessed, temporaries and the roofline time
(`fstfl_jax.tools.roofline`). Compiler estimates, not measurements.
"""

import functools
import json
import math
import sys
import time

from fstfl_jax.tools import aot  # First: sets the libtpu environment before JAX starts.

from absl import flags  # noqa: E402
from etils import epath  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from data_pipelines import cli  # noqa: E402
from fstfl_jax.models import correlation  # noqa: E402
from fstfl_jax.tools import roofline  # noqa: E402
from fstfl_jax.training import sharding as sharding_lib  # noqa: E402

# Stage -> (H = W, C) of a ResNet-50 stage output at 224x224.
STAGES = {"res2": (56, 256), "res3": (28, 512), "res4": (14, 1024), "res5": (7, 2048)}
MLP_WIDTH = 16


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_multi_string("topology", ["v5e:2x2"], "TPU topologies (repeat the flag).",
                            flag_values=fv)
  flags.DEFINE_integer("clips", 4, "Clips per chip.", flag_values=fv)
  flags.DEFINE_integer("frames", 8, "Frames per clip.", flag_values=fv)
  flags.DEFINE_multi_enum("stages", list(STAGES), list(STAGES), "Stages (repeat the flag).",
                          flag_values=fv)
  flags.DEFINE_multi_string("disp", ["6", "half"], "Values of D; 'half' = ceil(X/2) of the "
                            "stage (the paper). Repeat the flag.", flag_values=fv)
  flags.DEFINE_multi_integer("offsets", [0, 1, 2, 3], "Temporal offsets (repeat the flag).",
                             flag_values=fv)
  flags.DEFINE_multi_enum("impls", ["allpairs", "banded", "einsum"], correlation.IMPLS,
                          "Implementations (repeat the flag).", flag_values=fv)
  flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype.",
                    flag_values=fv)
  flags.DEFINE_bool("remat", True, "correlate(remat=...): recompute each offset's volume in the "
                    "backward.", flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the rows here.", flag_values=fv)


def compile_kernel(mesh, chip, *, clips, frames, size, channels, max_disp, offsets, impl, dtype,
                   remat=True):
  """Per-chip compiler numbers of the kernel's fwd+bwd; x [clips * chips, T, X, X, C]."""
  k = (2 * max_disp + 1) ** 2
  data = NamedSharding(mesh, P(sharding_lib.DATA_AXIS))
  x = jax.ShapeDtypeStruct((clips * mesh.size, frames, size, size, channels), jnp.dtype(dtype),
                           sharding=data)
  w1 = jax.ShapeDtypeStruct((k, MLP_WIDTH), jnp.float32, sharding=sharding_lib.replicated(mesh))
  corr = functools.partial(correlation.correlate, max_disp=max_disp, offsets=offsets, impl=impl,
                           remat=remat)

  def loss(x, w1):
    return jnp.sum(jax.nn.relu(corr(x) @ w1))

  start = time.perf_counter()
  compiled, error = aot.aot_compile(jax.jit(jax.grad(loss, argnums=(0, 1))), mesh, x, w1)
  row = dict(K=k, compile_s=time.perf_counter() - start)
  if compiled is None:
    return dict(row, fits=False, error=error)
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
  flops, nbytes = float(cost["flops"]), float(cost["bytes accessed"])
  roof = roofline.roofline(flops, nbytes, chip)
  return dict(row, fits=True, gflop=flops / 1e9, gb=nbytes / 1e9,
              temp_gib=mem.temp_size_in_bytes / 2**30, ms=1e3 * roof["step_seconds"],
              bound=roof["bound"])


def main(argv: list[str]) -> None:
  args = cli.parse_flags(argv, define_flags, prog="benchmarks.correlation_tpu", doc=__doc__)
  rows = []
  for topology in args.topology:
    mesh, chip = aot.topology_mesh(topology), roofline.chip_spec(topology)
    for stage in args.stages:
      size, channels = STAGES[stage]
      for disp in args.disp:
        d = math.ceil(size / 2) if disp == "half" else int(disp)
        for impl in args.impls:
          row = dict(topology=topology, stage=stage, D=d, impl=impl)
          row.update(compile_kernel(mesh, chip, clips=args.clips, frames=args.frames, size=size,
                                    channels=channels, max_disp=d, offsets=tuple(args.offsets),
                                    impl=impl, dtype=args.dtype, remat=args.remat))
          print(json.dumps(row), file=sys.stderr, flush=True)
          rows.append(row)
  print(f"fwd+bwd, {args.dtype}, remat={args.remat}, {args.clips} clips x {args.frames} frames "
        f"per chip, offsets {tuple(args.offsets)}; per chip:\n")
  print("| topology | stage | D | impl | GFLOP | GB accessed | temp GiB | roofline ms | bound |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if not r["fits"]:
      print(f"| {r['topology']} | {r['stage']} | {r['D']} | {r['impl']} | - | - | - | - | "
            "does not fit |")
      continue
    print(f"| {r['topology']} | {r['stage']} | {r['D']} | {r['impl']} | {r['gflop']:.1f} | "
          f"{r['gb']:.2f} | {r['temp_gib']:.2f} | {r['ms']:.2f} | {r['bound']} |")
  if args.json:
    epath.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])

r"""Where a bottleneck's TPU memory traffic goes: one ResNet block with and without GSF.

  python -m benchmarks.block_tpu --stage res2 --topology v5e:2x2 [--top 25]

Compiles forward+backward (train-mode BN) of one stride-1 bottleneck of the given stage, bf16,
--clips clips x --frames frames per chip, for a described TPU slice, without and with GSF, and
prints the compiler's per-chip FLOPs and bytes accessed. For the GSF block it then lists the
largest top-level instructions of the optimised HLO by output size, with TPU tiling padding
counted (a 32-channel minor axis tiled to 128 lanes occupies 4x its size), and the JAX op that
produced each. Compiler estimates, not measurements.
"""

import functools
import math
import re
import sys

from fstfl_jax.tools import aot  # First: sets the libtpu environment before JAX starts.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from configs import common  # noqa: E402
from data_pipelines import cli  # noqa: E402
from fstfl_jax.models import build_model  # noqa: E402
from fstfl_jax.models.resnet import Bottleneck  # noqa: E402
from fstfl_jax.models.video_net import block_parts  # noqa: E402
from fstfl_jax.training import sharding as sharding_lib  # noqa: E402

# Stage -> (H = W, planes) of a ResNet-50 stage at 224x224.
STAGES = {"res2": (56, 64), "res3": (28, 128), "res4": (14, 256), "res5": (7, 512)}
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
_INSTR = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\](\{[^}]*\})? ([\w-]+)\(")
_SKIP = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant")


def padded_bytes(dtype: str, dims: list[int], layout: str) -> int:
  """Bytes of an HLO array in its TPU layout: the two most minor dims rounded up to the tile.

  `layout` is the HLO text "{minor-to-major:T(a,b)...}"; without a tile, the plain size.
  """
  dims = list(dims)
  tile = re.search(r"T\((\d+),(\d+)\)", layout or "")
  order = re.match(r"\{([\d,]*)", layout or "")
  if tile and order and dims:
    minor_to_major = [int(i) for i in order.group(1).split(",") if i]
    for axis, t in zip(minor_to_major[:2], (int(tile.group(2)), int(tile.group(1)))):
      dims[axis] = -(-dims[axis] // t) * t
  return _BYTES.get(dtype, 4) * math.prod(dims)


def largest_instructions(hlo_text: str, top: int) -> list[tuple[int, str, str, str]]:
  """(padded output bytes, opcode, shape, JAX op name) of the top-level (unfused) instructions."""
  rows, in_fused = [], False
  for line in hlo_text.splitlines():
    if line and not line.startswith(" "):
      in_fused = line.lstrip("%").startswith("fused")  # Bodies of fusions: counted by the fusion.
      continue
    m = _INSTR.match(line)
    if in_fused or not m or m.group(5) in _SKIP:
      continue
    dims = [int(d) for d in m.group(3).split(",") if d]
    op = re.search(r'op_name="([^"]*)"', line)
    rows.append((padded_bytes(m.group(2), dims, m.group(4)), m.group(5),
                 f"{m.group(2)}[{m.group(3)}]", re.sub(r"^jit\([^)]*\)/", "",
                                                       op.group(1)) if op else "?"))
  return sorted(rows, reverse=True)[:top]


def compile_block(mesh, stage: str, use_gsf: bool, clips: int, frames: int):
  size, planes = STAGES[stage]
  cfg = common.model_config("gsf", 174, frames)
  cfg.dtype = "bfloat16"
  conv, norm, gsf = block_parts(build_model(cfg), frames)
  block = Bottleneck(planes, 1, conv, norm, gsf if use_gsf else None)
  n = clips * frames * mesh.size
  x = jax.ShapeDtypeStruct((n, size, size, 4 * planes), jnp.bfloat16,
                           sharding=sharding_lib.data_sharding(mesh))
  variables = jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0), x)
  variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
    a.shape, a.dtype, sharding=sharding_lib.replicated(mesh)), variables)

  def loss(params, batch_stats, x):
    y, updates = block.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                             mutable=["batch_stats"])
    return jnp.sum(jnp.square(y.astype(jnp.float32))), updates

  grad = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
  compiled, error = aot.aot_compile(grad, mesh, variables["params"], variables["batch_stats"], x)
  if compiled is None:
    raise RuntimeError(error)
  return compiled


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("stage", "res2", list(STAGES), "Stage whose bottleneck is compiled.",
                    flag_values=fv)
  flags.DEFINE_string("topology", "v5e:2x2", "TPU topology.", flag_values=fv)
  flags.DEFINE_integer("clips", 4, "Clips per chip.", flag_values=fv)
  flags.DEFINE_integer("frames", 8, "Frames per clip.", flag_values=fv)
  flags.DEFINE_integer("top", 25, "Largest instructions listed.", flag_values=fv)


def main(argv: list[str]) -> None:
  args = cli.parse_flags(argv, define_flags, prog="benchmarks.block_tpu", doc=__doc__)
  mesh = aot.topology_mesh(args.topology)
  for use_gsf in (False, True):
    compiled = compile_block(mesh, args.stage, use_gsf, args.clips, args.frames)
    cost = compiled.cost_analysis()
    print(f"{args.stage} bottleneck {'with' if use_gsf else 'without'} GSF: "
          f"{cost['flops'] / 1e9:.2f} GFLOP, {cost['bytes accessed'] / 1e9:.3f} GB accessed, "
          f"temp {compiled.memory_analysis().temp_size_in_bytes / 2**30:.2f} GiB", flush=True)
  for size, opcode, shape, op in largest_instructions(compiled.as_text(), args.top):
    print(f"{size / 2**20:8.1f} MiB  {opcode:<12} {shape:<28} {op[-80:]}")


if __name__ == "__main__":
  main(sys.argv[1:])

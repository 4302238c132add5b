"""Multiply-accumulate (MAC) and parameter counting for Flax models, read off their jaxpr.

Convention (the one behind ResNet-50's "4.1 GFLOPs" and PyTorch's FlopCounter / 2): only
convolutions and matrix products are counted, one MAC per multiply-add. BN, activations,
pooling, normalisation and residual adds are free. A convolution costs
`output elements x kernel spatial size x in_channels / groups` (padding included, as PyTorch
counts it); a `dot_general` costs `output elements x contracted size`. A grouped conv run
densely with a block-diagonal kernel (GSF's gate) counts as the grouped conv
(`layers.BLOCK_DIAGONAL_SCOPE`).

Each counted op keeps its name stack (Flax runs every module method under `jax.named_scope`, so
the stack reads like `VideoNet/layer1_0/gsf/...`), which lets callers attribute cost to modules
and drop scopes that must be counted analytically instead (the STC correlation, whose fast
all-pairs implementation does more work than the exact local-window count; the STC names that
scope `CORRELATION_SCOPE`, and `exact_correlation` computes the exact count from each STC's own
settings and input shapes).
"""

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.extend import core

from fstfl_jax.models import layers
from fstfl_jax.models import stc as stc_lib

# Name scope that marks the correlation's traced ops (see `exact_correlation`).
CORRELATION_SCOPE = stc_lib.CORRELATION_SCOPE


@dataclasses.dataclass(frozen=True)
class OpCost:
  """One counted op: where it ran, what it was, and its MACs (times any enclosing scan length)."""
  scope: tuple[str, ...]
  primitive: str
  macs: int


def conv_macs(eqn: core.JaxprEqn) -> int:
  """MACs of a `conv_general_dilated`: out elements x (kernel size x in-channels per group)."""
  rhs_shape = eqn.invars[1].aval.shape
  out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  out_elems = math.prod(eqn.outvars[0].aval.shape)
  # The kernel's input-feature dim already holds in_channels / feature_group_count.
  return out_elems * (math.prod(rhs_shape) // out_features)


def dot_general_macs(eqn: core.JaxprEqn) -> int:
  """MACs of a `dot_general`: out elements x product of the contracted dims."""
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)


_COUNTERS: dict[str, Callable[[core.JaxprEqn], int]] = {
  "conv_general_dilated": conv_macs,
  "dot_general": dot_general_macs,
}


def _scope_of(eqn: core.JaxprEqn, parent: tuple[str, ...]) -> tuple[str, ...]:
  # Name stacks inside a sub-jaxpr (jit, remat, scan, ...) are relative to the calling eqn.
  own = str(eqn.source_info.name_stack)
  return parent + tuple(part for part in own.split("/") if part)


def _block_diagonal_blocks(scope: tuple[str, ...]) -> int:
  """n for an op under `layers.BLOCK_DIAGONAL_SCOPE` + n (a grouped conv run densely), else 1."""
  for part in scope:
    if part.startswith(layers.BLOCK_DIAGONAL_SCOPE):
      return int(part[len(layers.BLOCK_DIAGONAL_SCOPE):])
  return 1


def _as_jaxpr(value: Any) -> core.Jaxpr | None:
  if isinstance(value, core.ClosedJaxpr):
    return value.jaxpr
  if isinstance(value, core.Jaxpr):
    return value
  return None


def jaxpr_costs(jaxpr: core.Jaxpr | core.ClosedJaxpr, scope: tuple[str, ...] = (),
                multiplier: int = 1) -> list[OpCost]:
  """Counted ops of `jaxpr`, recursing into every sub-jaxpr.

  A scan body counts `length` times; a `cond` counts its most expensive branch; any other
  primitive holding jaxprs (jit, remat, custom_jvp/vjp, shard_map, ...) counts them once.
  A while loop has no static trip count, so MACs inside one raise.
  """
  jaxpr = _as_jaxpr(jaxpr)
  costs: list[OpCost] = []
  for eqn in jaxpr.eqns:
    here = _scope_of(eqn, scope)
    name = eqn.primitive.name
    if name in _COUNTERS:
      macs = _COUNTERS[name](eqn) // _block_diagonal_blocks(here)
      costs.append(OpCost(here, name, multiplier * macs))
    elif name == "scan":
      costs += jaxpr_costs(eqn.params["jaxpr"], here, multiplier * eqn.params["length"])
    elif name == "cond":
      branches = [jaxpr_costs(b, here, multiplier) for b in eqn.params["branches"]]
      costs += max(branches, key=lambda b: sum(c.macs for c in b))
    elif name == "while":
      inner = jaxpr_costs(eqn.params["body_jaxpr"], here, multiplier)
      inner += jaxpr_costs(eqn.params["cond_jaxpr"], here, multiplier)
      if any(c.macs for c in inner):
        raise ValueError(f"Cannot count MACs inside a while loop at scope {'/'.join(here)!r}: "
                         "its trip count is not static; use lax.scan or lax.fori_loop with "
                         "static bounds.")
    else:
      for value in eqn.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for sub in values:
          if (sub_jaxpr := _as_jaxpr(sub)) is not None:
            costs += jaxpr_costs(sub_jaxpr, here, multiplier)
  return costs


def count_ops(fn: Callable[..., Any], *args: Any) -> list[OpCost]:
  """Traces `fn(*args)` (arrays or `jax.ShapeDtypeStruct`s; nothing is computed) and counts it."""
  return jaxpr_costs(jax.make_jaxpr(fn)(*args))


def total_macs(costs: Iterable[OpCost]) -> int:
  return sum(c.macs for c in costs)


def in_scope(cost: OpCost, names: Iterable[str]) -> bool:
  """Whether any name-stack component of `cost` is one of `names` (method suffixes ignored)."""
  wanted = set(names)
  return any(part.split(".")[0] in wanted for part in cost.scope)


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def group_params(params: Mapping[str, Any], group_of: Callable[[tuple[str, ...]], str]
                 ) -> dict[str, int]:
  """Parameter counts summed per `group_of(path)`, path = the tuple of dict keys to a leaf."""
  out: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = group_of(tuple(str(getattr(k, "key", k)) for k in path))
    out[key] = out.get(key, 0) + math.prod(leaf.shape)
  return out


def group_macs(costs: Iterable[OpCost], group_of: Callable[[tuple[str, ...]], str]
               ) -> dict[str, int]:
  """MACs summed per `group_of(scope)`."""
  out: dict[str, int] = {}
  for c in costs:
    key = group_of(c.scope)
    out[key] = out.get(key, 0) + c.macs
  return out


def correlation_frame_pairs(num_frames: int, offsets: Sequence[int], boundary: str = "zero",
                            valid_pairs_only: bool = True) -> int:
  """Frame pairs per clip whose similarities the correlation must compute.

  With a zero temporal boundary only pairs (t, t+l) inside the clip carry information:
  T - |l| per offset (8+7+6+5 = 26 for T=8, l=0..3). Clamped or circular boundaries (or
  computing against zero frames) give T pairs per offset.
  """
  if boundary == "zero" and valid_pairs_only:
    return sum(max(num_frames - abs(l), 0) for l in offsets)
  return num_frames * len(offsets)


def correlation_macs(shape: Sequence[int], max_disp: int, offsets: Sequence[int],
                     boundary: str = "zero", valid_pairs_only: bool = True) -> int:
  """Exact MACs of a local correlation of x [B, T, H, W, C] (the paper's count).

  B x pairs x H x W x (2D+1)^2 x C: one C-long dot product per query position, displacement
  and frame pair. For the default res3 STC of one clip (28x28x512, D=6, l=0..3, T=8) this is
  26 x 784 x 169 x 512 = 1,763.8 M, whatever implementation computes it.
  """
  batch, frames, height, width, channels = shape
  pairs = correlation_frame_pairs(frames, offsets, boundary, valid_pairs_only)
  return batch * pairs * height * width * (2 * max_disp + 1) ** 2 * channels


@contextlib.contextmanager
def exact_correlation() -> Iterator[list[tuple[tuple[str, ...], int]]]:
  """Collects the exact correlation MACs of every STC of a Flax model traced inside the block.

  Each call of an STC's correlation step (one per correlation source) appends `(module path,
  exact MACs)` to the yielded list, computed by `correlation_macs` from the step's input
  `[B, T, H, W, C]`, its D and the module's own offsets and boundary. The traced ops of the
  correlation itself run under the name scope `CORRELATION_SCOPE`, so callers drop them with
  `in_scope`. Needed because the fast all-pairs implementation computes every position pair
  where the module defines a (2D+1)^2 window.
  """
  records: list[tuple[tuple[str, ...], int]] = []

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, stc_lib.STC) and context.method_name == "_features":
      v, d = args[0], args[1]  # _features(v [B, T, H, W, C], d, mlps).
      settings = context.module.settings
      records.append((tuple(context.module.path), correlation_macs(
        v.shape, d, settings.offsets, settings.temporal_boundary)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(count):
    yield records

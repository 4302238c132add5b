"""The spatio-temporal correlation (STC) module (paper §3; defaults and choices: docs/stc.md).

    I [N, H, W, C] (N = B*T)
      -> S = cosine correlation with a (2D+1)^2 window at offsets l   [B, T, H, W, L, K]
      -> F = [MLP_spatial(S_{l=0}), MLP_temporal(S_{l!=0})]            [B, T, H, W, C_F]
      -> Z = 4 depthwise-separable convs (DW 7x7, then three DW 3x3; BN+ReLU after every
             DW and PW); the last PW maps to C                        [N, H, W, C]
      -> I + Z

Defaults (D=6, offsets 0..3, MLPs 169->16->8, C_F=32, PW widths 16,16,16,C) cost 18,160
params and 1.905 GMACs at res3 for 8 frames, inside the paper's budget (docs/stc.md#cost-budget).
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fstfl_jax.models import correlation
from fstfl_jax.models import layers

# Name scope of the correlation's traced ops.
CORRELATION_SCOPE = "correlation"


@dataclasses.dataclass(frozen=True)
class STCSettings:
  """The STC's knobs: one field per key of `config.model.stc`, where the defaults and their
  meanings are (configs/common.py, docs/stc.md#configuration). Sequences are tuples and
  `max_disp_per_stage` is a tuple of (stage, D) pairs, so the settings are hashable."""
  stages: tuple[str, ...]
  max_disp: int
  half_extent: bool
  max_disp_per_stage: tuple[tuple[str, int], ...]
  offsets: tuple[int, ...]
  temporal_boundary: str
  mask_channel: bool
  reduce_channels: int
  norm_eps: float
  spatial_mlp: tuple[int, ...]
  temporal_mlp: tuple[int, ...]
  mlp_out: int
  share_temporal_mlp: bool
  mlp_bias: bool
  fusion_widths: tuple[int, ...]
  fusion_kernels: tuple[int, ...]
  final_relu: bool
  zero_init_last_bn: bool
  source: str
  impl: str
  remat: bool


def resolve_max_disp(stc_cfg: STCSettings, stage: str, height: int, width: int) -> int:
  """D for a stage: ceil(max(X, Y)/2) if `half_extent` (the paper), else a per-stage override
  from `max_disp_per_stage`, else `max_disp`."""
  if stc_cfg.half_extent:
    return math.ceil(max(height, width) / 2)
  d = dict(stc_cfg.max_disp_per_stage).get(stage, stc_cfg.max_disp)
  if not isinstance(d, int) or d < 0:
    raise ValueError(f"stc.max_disp (stage {stage}) must be a non-negative int, got {d!r}.")
  return d


class DisplacementMLP(nn.Module):
  """Per-position MLP over the displacement axis (eq. 3-4): bias-free Dense + ReLU layers.

  `[..., K] -> [..., out]`; any leading axes are broadcast (the n-mode product).
  """
  hidden: tuple[int, ...]
  out: int
  use_bias: bool

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    for i, width in enumerate(tuple(self.hidden) + (self.out,)):
      s = nn.relu(nn.Dense(width, use_bias=self.use_bias, dtype=jnp.float32,
                           param_dtype=jnp.float32, name=f"dense{i}")(s))
    return s


class STC(nn.Module):
  """STC on the folded batch `[N, H, W, C] -> [N, H, W, C]` (residual).

  Attributes:
    stage: name of the host stage ("res3"), for per-stage overrides and errors.
    settings: the module's knobs (docs/stc.md#configuration).
    num_frames: T (static: the module reshapes [B*T] -> [B, T]).
    conv: `layers.conv` with the compute dtype bound.
    norm: the BatchNorm of folded frames (momentum, eps, dtype, ghost groups bound).
    dtype: compute dtype of the fusion convs.
  """
  stage: str
  settings: STCSettings
  num_frames: int
  conv: Callable[..., nn.Module] = layers.conv
  norm: Callable[..., nn.Module] = layers.BatchNorm
  dtype: Any = jnp.float32

  def _features(self, v: jax.Array, d: int, mlps: dict[int, nn.Module]) -> jax.Array:
    """Correlation + MLPs for one source. v: [B, T, H, W, C] -> F [B, T, H, W, C_F].

    mlps maps an offset index to its MLP; indices sharing one module are run together.
    """
    scfg = self.settings
    # Named so that MAC counting (fstfl_jax.models.flops) can replace these traced ops, which
    # depend on the implementation, with the exact count of the definition.
    with jax.named_scope(CORRELATION_SCOPE):
      s = correlation.correlate(
        v, max_disp=d, offsets=tuple(scfg.offsets), boundary=scfg.temporal_boundary,
        impl=scfg.impl, eps=scfg.norm_eps, remat=scfg.remat)  # [B, T, H, W, L, K] float32
    feats, done = [], set()
    for i, mlp in mlps.items():
      if i in done:
        continue
      group = [j for j, m in mlps.items() if m is mlp]
      done.update(group)
      f = mlp(s[..., jnp.array(group), :])  # Shared over its offsets: [B, T, H, W, L_g, C']
      feats.append(f.reshape(f.shape[:-2] + (-1,)))
    return jnp.concatenate(feats, axis=-1)

  def _make_mlps(self) -> dict[int, nn.Module]:
    """Spatial MLP for l=0; one temporal MLP shared by every l != 0 (or one per offset)."""
    scfg = self.settings
    offsets = tuple(scfg.offsets)
    mlps: dict[int, nn.Module] = {}
    if 0 in offsets:
      mlps[offsets.index(0)] = DisplacementMLP(
        tuple(scfg.spatial_mlp), scfg.mlp_out, scfg.mlp_bias, name="spatial_mlp")
    shared = None
    for i, l in enumerate(offsets):
      if l == 0:
        continue
      if scfg.share_temporal_mlp:
        if shared is None:
          shared = DisplacementMLP(
            tuple(scfg.temporal_mlp), scfg.mlp_out, scfg.mlp_bias, name="temporal_mlp")
        mlps[i] = shared
      else:
        mlps[i] = DisplacementMLP(tuple(scfg.temporal_mlp), scfg.mlp_out, scfg.mlp_bias,
                                  name=f"temporal_mlp_{i}")
    return mlps

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, prev: jax.Array | None = None) -> jax.Array:
    """x: [N, H, W, C] stage output; prev: [N, 2H', 2W', C'] previous stage output (res2_pooled)."""
    scfg = self.settings
    n, h, w, c = x.shape
    t = self.num_frames
    b = n // t
    dtype = self.dtype
    d = resolve_max_disp(scfg, self.stage, h, w)
    if scfg.zero_init_last_bn and scfg.final_relu:
      raise ValueError("stc.zero_init_last_bn=True needs stc.final_relu=False: with a ReLU after "
                       "a zero-gamma BN the branch gets zero gradient forever "
                       "(docs/stc.md#zero-gamma-trap).")

    sources = []
    if scfg.source in ("self", "both"):
      src = x
      if scfg.reduce_channels:
        src = self.conv(scfg.reduce_channels, 1, name="reduce_conv")(src)
        src = nn.relu(self.norm(name="reduce_bn")(src, train))
      sources.append(src)
    if scfg.source in ("res2_pooled", "both"):
      if prev is None:
        raise ValueError(f"stc.source={scfg.source!r} needs a previous stage before {self.stage}.")
      fh, fw = prev.shape[1] // h, prev.shape[2] // w
      sources.append(nn.avg_pool(prev, (fh, fw), strides=(fh, fw)))
    if not sources:
      raise ValueError(f"stc.source must be 'self', 'res2_pooled' or 'both', got {scfg.source!r}.")

    # One set of MLPs serves every source ("both": the res2 slices act as extra offsets).
    mlps = self._make_mlps()
    f = jnp.concatenate(
      [self._features(s.reshape((b, t) + s.shape[1:]), d, mlps) for s in sources], axis=-1)
    if scfg.mask_channel:
      valid = correlation.temporal_validity(t, tuple(scfg.offsets), scfg.temporal_boundary)
      valid = jnp.broadcast_to(jnp.asarray(valid)[None, :, None, None, :],
                               (b, t, h, w, valid.shape[-1]))
      f = jnp.concatenate([f, valid], axis=-1)
    z = f.reshape(n, h, w, f.shape[-1]).astype(dtype)

    widths = tuple(scfg.fusion_widths) + (c,)
    if len(widths) != len(scfg.fusion_kernels):
      raise ValueError(
        f"stc.fusion_widths has {len(scfg.fusion_widths)} entries; expected "
        f"len(stc.fusion_kernels) - 1 = {len(scfg.fusion_kernels) - 1}.")
    for i, (k, width) in enumerate(zip(scfg.fusion_kernels, widths)):
      last = i == len(widths) - 1
      z = self.conv(z.shape[-1], k, groups=z.shape[-1], name=f"dw{i + 1}")(z)
      z = nn.relu(self.norm(name=f"dw{i + 1}_bn")(z, train))
      z = self.conv(width, 1, name=f"pw{i + 1}")(z)
      zero_gamma = last and scfg.zero_init_last_bn
      z = self.norm(name=f"pw{i + 1}_bn",
                    scale_init=nn.initializers.zeros if zero_gamma else nn.initializers.ones)(
        z, train)
      if not last or scfg.final_relu:
        z = nn.relu(z)
    return x + z.astype(x.dtype)

"""Building blocks shared by the backbone, GSF and STC: torch-style convs and BatchNorm.

Why our own BatchNorm: it supports ghost (per-group) statistics inside jit, which mimics the
reference's per-GPU BN under `nn.DataParallel` while staying independent of the device count,
and it updates the running variance with the unbiased batch variance as PyTorch does, so
converted checkpoints and the reference agree after training steps too.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu') as used by torchvision ResNet.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv/Linear weight init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init, U(+-1/sqrt(fan_in)); fan_in is that of the layer's kernel."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv(features: int, kernel: int | tuple[int, ...], stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Any = jnp.float32, name: str | None = None,
         kernel_init: nn.initializers.Initializer = kaiming_fan_out,
         bias_init: nn.initializers.Initializer = nn.initializers.zeros,
         columns: tuple[tuple[int, ...], ...] | None = None) -> nn.Module:
  """A conv with torchvision's explicit symmetric padding (k // 2 on every side).

  Flax's 'SAME' pads stride-2 convs asymmetrically (more at the end), which shifts every
  feature map by half a pixel relative to torch once ImageNet weights are loaded.
  With `columns`, a `SplitConv` (same parameter; plain square stride-1 bias-free convs only).
  """
  if columns is not None:
    if stride != 1 or groups != 1 or use_bias or not isinstance(kernel, int):
      raise ValueError("conv(columns=...) supports square stride-1 bias-free convs only.")
    return SplitConv(features, kernel, columns, dtype, name=name)
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return nn.Conv(
    features, kernel, strides=stride, padding=[(k // 2, k // 2) for k in kernel],
    feature_group_count=groups, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
    kernel_init=kernel_init, bias_init=bias_init, name=name)


# Name-scope prefix of a conv whose kernel is block-diagonal with n blocks (zero weights across
# groups, a grouped conv run densely): MAC counting (`fstfl_jax.models.flops`) counts 1/n of it, the
# MACs of the grouped conv it computes.
BLOCK_DIAGONAL_SCOPE = "block_diagonal_"


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last, with optional ghost groups.

  Attributes:
    momentum: running-average decay (Flax convention: PyTorch momentum 0.1 == 0.9 here).
    epsilon: added to the variance.
    group_rows: 0 for statistics over the whole (global) batch; k > 0 for statistics per
      consecutive group of k rows of the leading axis (ghost BN).
    dtype: output dtype; statistics are always float32.
    scale_init: initialiser of gamma.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  group_rows: int = 0
  dtype: Any = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array], train: bool,
               channel_order: np.ndarray | None = None) -> jax.Array | tuple[jax.Array, ...]:
    """Normalises `x`, or each of a tuple of arrays that together hold the channels.

    A tuple is the channel axis split into pieces (concatenated, they would be the input): each
    piece is normalised on its own, so the caller never builds the concatenation.
    `channel_order[p]` is the parameter channel of input channel p (default: the identity).
    """
    pieces = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    c = sum(piece.shape[-1] for piece in pieces)
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if channel_order is not None:
      scale, bias = scale[channel_order], bias[channel_order]
    bounds = np.cumsum([0] + [piece.shape[-1] for piece in pieces])
    if not train:
      mean, var = ra_mean.value, ra_var.value
      if channel_order is not None:
        mean, var = mean[channel_order], var[channel_order]
      out = tuple(
        ((piece.astype(jnp.float32) - mean[lo:hi]) * jax.lax.rsqrt(var[lo:hi] + self.epsilon)
         * scale[lo:hi] + bias[lo:hi]).astype(self.dtype)
        for piece, lo, hi in zip(pieces, bounds[:-1], bounds[1:]))
      return out if isinstance(x, (tuple, list)) else out[0]
    rows = self.group_rows or pieces[0].shape[0]
    if pieces[0].shape[0] % rows:
      raise ValueError(f"Ghost BN: batch of {pieces[0].shape[0]} rows is not a multiple of {rows}.")
    grouped, means, variances = [], [], []
    for piece in pieces:
      # Statistics per group of `rows` leading rows: [G, 1, ..., 1, C_piece].
      xg = piece.astype(jnp.float32).reshape((piece.shape[0] // rows, rows) + piece.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = xg.mean(axes, keepdims=True)
      grouped.append(xg)
      means.append(mean)
      variances.append(jnp.square(xg - mean).mean(axes, keepdims=True))
    if not self.is_initializing():
      count = grouped[0].size // (grouped[0].shape[0] * grouped[0].shape[-1])
      batch_mean = jnp.concatenate([m.mean(axis=0).reshape(-1) for m in means])
      batch_var = jnp.concatenate([v.mean(axis=0).reshape(-1) for v in variances])
      if channel_order is not None:
        inverse = np.argsort(channel_order)
        batch_mean, batch_var = batch_mean[inverse], batch_var[inverse]
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * batch_mean
      ra_var.value = m * ra_var.value + (1 - m) * batch_var * (count / max(count - 1, 1))
    out = tuple(
      (((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(piece.shape) * scale[lo:hi]
       + bias[lo:hi]).astype(self.dtype)
      for piece, xg, mean, var, lo, hi in zip(pieces, grouped, means, variances, bounds[:-1],
                                              bounds[1:]))
    return out if isinstance(x, (tuple, list)) else out[0]


class SplitConv(nn.Module):
  """A bias-free stride-1 conv whose output channels are computed as separate arrays.

  The kernel is the ordinary `[k, k, C_in, features]` parameter of `conv` (same name and
  shape, so checkpoints and converted weights do not change); output i holds the kernel
  columns `columns[i]`, in that order. Used where the consumers want pieces of the output
  (GSF's gated channels): slicing and concatenating a wide activation costs whole passes over
  it on accelerators, slicing the kernel costs nothing.
  `[N, H, W, C_in] -> tuple of [N, H, W, len(columns[i])]`.
  """
  features: int
  kernel_size: int
  columns: tuple[tuple[int, ...], ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    k = self.kernel_size
    kernel = self.param("kernel", kaiming_fan_out, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    return tuple(
      jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel[..., np.asarray(cols)].astype(self.dtype), (1, 1),
        [(k // 2, k // 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")).astype(self.dtype)
      for cols in self.columns)


def dtype_from_name(name: str) -> Any:
  """`model.dtype` ("float32" | "bfloat16" | "float16") -> the compute dtype."""
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}.")
  return jnp.dtype(name)

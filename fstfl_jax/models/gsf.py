"""Gate-Shift-Fuse (GSF) as the official GSF code computes it (docs/gsf.md).

The reference gates the first C_g channels of conv3's output and re-interleaves them at the
end. Here conv3 computes those C_g channels as their own tensor, already in the reference's
output order (`interleave_order`), and GSF works on that tensor alone: the pass-through
channels are never sliced out or concatenated back, and no permutation of activations is
needed, because every step of GSF is per channel except two that act on tiny tensors (the
fuse descriptor's channel conv and the gate conv's kernel), which are permuted instead
(docs/gsf.md#layout-on-accelerators).

In the reference's channel order (x = the gated channels, [B, T, H, W, C_g]):

    g      = tanh(Conv3d_{3x3x3, groups=2}(ReLU(BN3d(x))))        [B, T, H, W, 2]
    y_k    = g_k * x_k,   r_k = x_k - y_k                          (k = 1, 2: channel halves)
    s_k    = shift_{t <- t+1}(y_1),  s_2 = shift_{t <- t-1}(y_2)   (zero fill, never across clips)
    w_k    = sigmoid(Conv2d_k^{3x3 over (c, t)}([GAP_hw(s_k); GAP_hw(r_k)]))
    z_k    = w_k * s_k + (1 - w_k) * r_k
    out    = [perm(z_1), perm(z_2), X[..., C_g:]]

Parameter count per module: 29*C_g + 40.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fstfl_jax.models import layers


def gated_channels(channels: int, ratio_percent: float) -> int:
  """C_g = floor(C*r/100), rounded up to even; the re-interleave needs C_g % 4 == 0."""
  c_g = int(channels * ratio_percent // 100)
  c_g += c_g % 2
  if c_g == 0 or c_g % 4:
    raise ValueError(
      f"GSF needs the gated channels floor({channels}*{ratio_percent}/100) (made even) to be a "
      f"positive multiple of 4, got {c_g}.")
  return c_g


def interleave_order(c_g: int) -> np.ndarray:
  """The reference's output permutation of the gated channels: out[p] = in[order[p]].

  Within each half (group) of C_g/2 channels, with q = C_g/4: out[2j+h] = in[h*q + j], i.e.
  the half's two quarters are interleaved (docs/gsf.md#re-interleave). Groups stay in place.
  """
  q = c_g // 4
  index = np.arange(c_g).reshape(2, 2, q)  # [group, quarter h, j]
  return np.swapaxes(index, 1, 2).reshape(c_g)


def shift_frames(y: jax.Array, num_frames: int, direction: int) -> jax.Array:
  """Shifts folded frames `[B*T, ...]` by one frame within each clip, with zero fill.

  direction=+1: frame t receives frame t+1 (the reference's group 1, "left shift").
  direction=-1: frame t receives frame t-1 (group 2).
  Works on the folded rows (no [B, T] reshape, which can force a relayout on accelerators);
  rows that would receive a frame of the neighbouring clip get zeros.
  """
  # One pad with a negative edge drops a row at one end and adds a zero row at the other (its
  # gradient is again a pad, which fuses; a slice + concatenate does not).
  edges = (-1, 1) if direction > 0 else (1, -1)
  shifted = jax.lax.pad(y, jnp.zeros((), y.dtype), [(*edges, 0)] + [(0, 0, 0)] * (y.ndim - 1))
  frame = np.arange(y.shape[0]) % num_frames
  keep = frame != (num_frames - 1 if direction > 0 else 0)
  return jnp.where(keep.reshape((-1,) + (1,) * (y.ndim - 1)), shifted, jnp.zeros((), y.dtype))


class GateConv(nn.Module):
  """The gate's Conv3d (3x3x3, zero padding 1, 2 groups -> 2 channels, with bias).

  The kernel keeps the reference's shape [3, 3, 3, C_g/2, 2] (group k's C_g/2 inputs ->
  output k, in the reference's channel order); `order` says which reference channel each
  input channel is, and the kernel's input axis is permuted to match.
  `[B*T, H, W, C_g] -> [B*T, H, W, 2]` (folded frames).
  """
  num_frames: int
  order: tuple[int, ...]
  dtype: Any

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    c_g = u.shape[-1]
    half = c_g // 2
    kernel = self.param("kernel", layers.torch_default_kernel, (3, 3, 3, half, 2), jnp.float32)
    bias = self.param("bias", layers.torch_default_bias(half * 27), (2,), jnp.float32)
    # Both groups see the same within-half permutation (interleave_order keeps groups whole).
    kernel = kernel[:, :, :, np.asarray(self.order[:half]), :]
    # A 3x3x3 conv is three 3x3 convs, one per temporal tap kt, whose outputs are summed after
    # shifting frame t+kt-1 to t. All taps and both groups run as one 2D conv on the unshifted
    # frames with 6 output channels (block-diagonal: zero weights across groups), and only the
    # tiny 6-channel output is shifted. A grouped 3D conv or stacking neighbouring frames into
    # channels would move the whole input through extra copies on accelerators (the former is
    # also slow on XLA:CPU); the extra MACs are negligible.
    block = (np.arange(c_g)[:, None] // half == np.arange(2)[None, :]).astype(np.float32)
    kernel = jnp.concatenate([kernel, kernel], axis=3) * block  # [3, 3, 3, C_g, 2]
    kernel = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c_g, 6)  # out = (kt, group)
    taps = jax.lax.conv_general_dilated(
      u.astype(self.dtype), kernel.astype(self.dtype), (1, 1), [(1, 1), (1, 1)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    # Output frame t sums tap kt of input frame t + kt - 1 (zero past the clip's ends).
    t = self.num_frames
    y = (shift_frames(taps[..., 0:2], t, -1) + taps[..., 2:4]
         + shift_frames(taps[..., 4:6], t, 1))
    return (y + bias).astype(self.dtype)


class GSF(nn.Module):
  """Gate-Shift-Fuse on the gated channels `[N, H, W, C_g]`, N = B*T, in output order.

  Input and output channels are in the reference's output order (`interleave_order`): the
  caller computes its input that way (conv3's columns permuted) and gets GSF's final output
  with no re-interleave. Pass-through channels never enter the module.

  Attributes:
    num_frames: T (static: clip boundaries in the folded batch).
    ratio: percent of the block's channels that are gated; the bottleneck reads it to have
      conv3 emit the C_g = `gated_channels(C, ratio)` channels this module takes.
    norm: BatchNorm of folded frames (ghost groups of whole clips).
    dtype: compute dtype.
  """
  num_frames: int
  ratio: float
  norm: Callable[..., nn.Module] = layers.BatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n, _, _, c_g = x.shape
    t = self.num_frames
    half = c_g // 2
    order = interleave_order(c_g)
    inverse = np.argsort(order)
    dtype = self.dtype

    # BN3d over (B, T, H, W) is BN over the folded rows.
    u = nn.relu(self.norm(name="bn3d")(x, train, channel_order=order))
    gate = jnp.tanh(GateConv(t, tuple(int(i) for i in order), dtype, name="conv3d")(u))

    # Everything stays on the folded [B*T, H, W, C_g] layout: a [B, T] reshape of the
    # activations can force relayout copies on accelerators; only pooled vectors are reshaped.
    first = np.arange(c_g) < half  # Group 1 channels (groups are contiguous halves).
    gate = jnp.where(first, gate[..., :1], gate[..., 1:])  # One gate per group.
    y = gate * x
    r = x - y
    s = jnp.where(first, shift_frames(y, t, 1), shift_frames(y, t, -1))
    # Descriptor: per group, a 2-channel "image" over (channel, time) of spatially pooled s, r,
    # in the reference's channel order (the conv mixes neighbouring channels).
    pooled = jnp.stack([s.mean((1, 2)), r.mean((1, 2))], axis=-1)[:, inverse]  # [B*T, C_g, 2]
    pooled = pooled.reshape(n // t, t, c_g, 2)
    weights = []
    for k in range(2):
      desc = jnp.swapaxes(pooled[:, :, k * half:(k + 1) * half], 1, 2)  # [B, C_g/2, T, 2]
      wk = nn.Conv(
        1, (3, 3), padding=[(1, 1), (1, 1)], use_bias=True, dtype=dtype,
        param_dtype=jnp.float32, kernel_init=layers.kaiming_fan_out,
        bias_init=layers.torch_default_bias(2 * 9), name=f"channel_conv{k + 1}")(desc)
      weights.append(jnp.swapaxes(wk[..., 0], 1, 2))  # [B, T, C_g/2]
    wgt = nn.sigmoid(jnp.concatenate(weights, axis=-1)[:, :, order])
    wgt = wgt.reshape(n, 1, 1, c_g)
    z = wgt * s + (1 - wgt) * r
    return z.astype(x.dtype)

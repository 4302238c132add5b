"""Gate-Shift-Fuse (GSF) as the official GSF code computes it (docs/gsf.md).

Layout: the input is the folded batch `[N, H, W, C]` with `N = B*T`, frames of a clip
consecutive. GSF sits between conv3 and bn3 of every bottleneck.

    x      = fold(X[..., :C_g])                                   [B, T, H, W, C_g]
    g      = tanh(Conv3d_{3x3x3, groups=2}(ReLU(BN3d(x))))        [B, T, H, W, 2]
    y_k    = g_k * x_k,   r_k = x_k - y_k                          (k = 1, 2: channel halves)
    s_1    = shift_{t <- t+1}(y_1),  s_2 = shift_{t <- t-1}(y_2)   (zero fill, never across clips)
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


def interleave_quarters(z: jax.Array) -> jax.Array:
  """Channel permutation of the reference: out[2j+h] = in[h*q + j], q = C/2.

  [..., C] -> [..., C]; the first and second halves of the channels are interleaved
  (docs/gsf.md#re-interleave).
  """
  q = z.shape[-1] // 2
  z = z.reshape(z.shape[:-1] + (2, q))
  return jnp.swapaxes(z, -1, -2).reshape(z.shape[:-2] + (2 * q,))


def shift_time(y: jax.Array, direction: int) -> jax.Array:
  """Shifts [B, T, ...] by one frame with zero fill.

  direction=+1: frame t receives frame t+1 (the reference's group 1, "left shift").
  direction=-1: frame t receives frame t-1 (group 2).
  """
  zeros = jnp.zeros_like(y[:, :1])
  if direction > 0:
    return jnp.concatenate([y[:, 1:], zeros], axis=1)
  return jnp.concatenate([zeros, y[:, :-1]], axis=1)


def stack_neighbour_frames(u: jax.Array) -> jax.Array:
  """[B, T, H, W, C] -> [B*T, H, W, 3C]: frames t-1, t, t+1 side by side (zeros past the ends)."""
  b, t = u.shape[:2]
  up = jnp.pad(u, [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)])
  return jnp.concatenate([up[:, :t], up[:, 1:t + 1], up[:, 2:]], axis=-1).reshape(
    (b * t,) + u.shape[2:-1] + (3 * u.shape[-1],))


class GateConv(nn.Module):
  """The gate's Conv3d (3x3x3, zero padding 1, 2 groups -> 2 channels, with bias).

  The kernel keeps the reference's shape [3, 3, 3, C_g/2, 2] (group k's C_g/2 inputs -> output
  k), but each group runs as a 2D 3x3 conv over its three neighbouring frames stacked into
  channels. Same result and MACs; XLA:CPU runs a grouped 3D conv with two output channels
  poorly, and on accelerators this is an ordinary 2D conv (docs/gsf.md#gate-convolution-layout;
  cost in the README's Benchmarks section). `[B, T, H, W, C_g] -> [B, T, H, W, 2]`.
  """
  dtype: Any

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    b, t, h, w, c_g = u.shape
    half = c_g // 2
    kernel = self.param("kernel", layers.torch_default_kernel, (3, 3, 3, half, 2), jnp.float32)
    bias = self.param("bias", layers.torch_default_bias(half * 27), (2,), jnp.float32)
    outs = []
    for k in range(2):
      # (kt, kh, kw, C/2) -> (kh, kw, kt*C/2, 1), matching the frame-major stacked channels.
      kk = jnp.transpose(kernel[..., k], (1, 2, 0, 3)).reshape(3, 3, 3 * half, 1)
      outs.append(jax.lax.conv_general_dilated(
        stack_neighbour_frames(u[..., k * half:(k + 1) * half].astype(self.dtype)),
        kk.astype(self.dtype), (1, 1), [(1, 1), (1, 1)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32))
    y = jnp.concatenate(outs, axis=-1) + bias
    return y.reshape(b, t, h, w, 2).astype(self.dtype)


class GSF(nn.Module):
  """Gate-Shift-Fuse on `[N, H, W, C]` with `N = B*T`.

  Attributes:
    num_frames: T (static: the module reshapes [B*T] -> [B, T]).
    ratio: percent of channels gated.
    norm: the BatchNorm of the gate's `[B, T, H, W, C_g]` input (ghost groups count clips).
    dtype: compute dtype.
  """
  num_frames: int
  ratio: float
  norm: Callable[..., nn.Module] = layers.BatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n, h, w, c = x.shape
    t = self.num_frames
    b = n // t
    c_g = gated_channels(c, self.ratio)
    half = c_g // 2
    dtype = self.dtype

    xg = x[..., :c_g].reshape(b, t, h, w, c_g)
    u = nn.relu(self.norm(name="bn3d")(xg, train))
    gate = jnp.tanh(GateConv(dtype, name="conv3d")(u))

    outs = []
    for k, direction in ((0, 1), (1, -1)):
      xk = xg[..., k * half:(k + 1) * half]
      yk = gate[..., k:k + 1] * xk
      rk = xk - yk
      sk = shift_time(yk, direction)
      # Descriptor: a 2-channel "image" over (channel, time) from spatially pooled s_k, r_k.
      desc = jnp.stack([sk.mean((2, 3)), rk.mean((2, 3))], axis=-1)  # [B, T, C_g/2, 2]
      desc = jnp.swapaxes(desc, 1, 2)  # [B, C_g/2, T, 2]: conv axes = (channel, time).
      wk = nn.Conv(
        1, (3, 3), padding=[(1, 1), (1, 1)], use_bias=True, dtype=dtype,
        param_dtype=jnp.float32, kernel_init=layers.kaiming_fan_out,
        bias_init=layers.torch_default_bias(2 * 9), name=f"channel_conv{k + 1}")(desc)
      wk = nn.sigmoid(jnp.swapaxes(wk[..., 0], 1, 2))[:, :, None, None, :]  # [B, T, 1, 1, C/2]
      zk = wk * sk + (1 - wk) * rk
      outs.append(interleave_quarters(zk))
    gated = jnp.concatenate(outs, axis=-1).reshape(n, h, w, c_g).astype(x.dtype)
    return jnp.concatenate([gated, x[..., c_g:]], axis=-1)

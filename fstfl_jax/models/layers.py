"""Building blocks shared by the backbone, GSF and STC: torch-style convs and BatchNorm.

Why our own BatchNorm: it supports ghost (per-group) statistics inside jit, which mimics the
reference's per-GPU BN under `nn.DataParallel` while staying independent of the device count,
and it updates the running variance with the unbiased batch variance as PyTorch does, so
converted checkpoints and the reference agree after training steps too.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
         bias_init: nn.initializers.Initializer = nn.initializers.zeros) -> nn.Conv:
  """A conv with torchvision's explicit symmetric padding (k // 2 on every side).

  Flax's 'SAME' pads stride-2 convs asymmetrically (more at the end), which shifts every
  feature map by half a pixel relative to torch once ImageNet weights are loaded.
  """
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return nn.Conv(
    features, kernel, strides=stride, padding=[(k // 2, k // 2) for k in kernel],
    feature_group_count=groups, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
    kernel_init=kernel_init, bias_init=bias_init, name=name)


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
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if not train:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)
      rows = self.group_rows or x.shape[0]
      if x.shape[0] % rows:
        raise ValueError(f"Ghost BN: batch of {x.shape[0]} rows is not a multiple of {rows}.")
      xg = xf.reshape((x.shape[0] // rows, rows) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = xg.mean(axes, keepdims=True)
      var = jnp.square(xg - mean).mean(axes, keepdims=True)
      count = xg.size // (xg.shape[0] * c)
      if not self.is_initializing():
        m = self.momentum
        unbiased = var.mean(axis=0).reshape(c) * (count / max(count - 1, 1))
        ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(axis=0).reshape(c)
        ra_var.value = m * ra_var.value + (1 - m) * unbiased
      # Normalise per group, then restore the original leading axis.
      y = (xg - mean) * jax.lax.rsqrt(var + self.epsilon)
      return (y.reshape(x.shape) * scale + bias).astype(self.dtype)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


def dtype_from_name(name: str) -> Any:
  """`model.dtype` ("float32" | "bfloat16" | "float16") -> the compute dtype."""
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}.")
  return jnp.dtype(name)

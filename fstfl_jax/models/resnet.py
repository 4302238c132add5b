"""ResNet-50 pieces in torchvision v1.5 layout (stride on the 3x3 conv), NHWC.

Submodule names mirror torchvision's state_dict keys (`layer1.0.conv1` -> `layer1_0/conv1`,
`downsample.0/1` -> `downsample_conv/_bn`) so that `models/convert.py` maps 1:1.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fstfl_jax.models import layers
from fstfl_jax.models.gsf import gated_channels, interleave_order


class Bottleneck(nn.Module):
  """conv1 1x1 -> bn1 -> relu -> conv2 3x3/s -> bn2 -> relu -> conv3 1x1 -> [GSF] -> bn3 (+ input).

  With GSF, conv3 emits GSF's C_g gated channels and the pass-through channels as two arrays.

  `[N, H, W, C_in] -> [N, H/s, W/s, 4*planes]`, N = B*T frames.

  Attributes:
    planes: width of the 3x3 conv; the block outputs 4 * planes channels.
    stride: of the 3x3 conv (and the projection shortcut).
    conv: `layers.conv` with the compute dtype bound.
    norm: the BatchNorm of folded frames (momentum, eps, dtype, ghost groups bound).
    gsf: `GSF` with its settings bound, or None for a plain ResNet block.
  """
  planes: int
  stride: int
  conv: Callable[..., nn.Module] = layers.conv
  norm: Callable[..., nn.Module] = layers.BatchNorm
  gsf: Callable[..., nn.Module] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_ch = 4 * self.planes
    y = self.conv(self.planes, 1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train))
    y = self.conv(self.planes, 3, self.stride, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, train))
    bn3 = self.norm(name="bn3")
    if self.gsf is not None:
      # conv3 emits GSF's gated channels (in GSF's output order) and the pass-through channels
      # as two arrays, and bn3 takes them as such: the wide activation is never sliced or
      # concatenated back before the residual add (docs/gsf.md#layout-on-accelerators).
      gsf = self.gsf(name="gsf")
      c_g = gated_channels(out_ch, gsf.ratio)
      columns = (tuple(int(i) for i in interleave_order(c_g)),) + (
        (tuple(range(c_g, out_ch)),) if c_g < out_ch else ())
      gated, *passed = self.conv(out_ch, 1, name="conv3", columns=columns)(y)
      y = jnp.concatenate(bn3((gsf(gated, train), *passed), train), axis=-1)
    else:
      y = bn3(self.conv(out_ch, 1, name="conv3")(y), train)
    if x.shape[-1] != out_ch or self.stride != 1:
      x = self.conv(out_ch, 1, self.stride, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, train)
    return nn.relu(y + x)


def stage_planes(width: int, num_stages: int) -> tuple[int, ...]:
  """3x3 widths of the stages: width, 2 width, 4 width, ..."""
  return tuple(width * 2**i for i in range(num_stages))

"""ResNet-50 pieces in torchvision v1.5 layout (stride on the 3x3 conv), NHWC.

Submodule names mirror torchvision's state_dict keys (`layer1.0.conv1` -> `layer1_0/conv1`,
`downsample.0/1` -> `downsample_conv/_bn`) so that `models/convert.py` maps 1:1.
"""

from collections.abc import Callable

import flax.linen as nn
import jax

from fstfl_jax.models import layers


class Bottleneck(nn.Module):
  """conv1 1x1 -> bn1 -> relu -> conv2 3x3/s -> bn2 -> relu -> conv3 1x1 -> [GSF] -> bn3 (+ input).

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
    y = self.conv(out_ch, 1, name="conv3")(y)
    if self.gsf is not None:
      y = self.gsf(name="gsf")(y, train)
    y = self.norm(name="bn3")(y, train)
    if x.shape[-1] != out_ch or self.stride != 1:
      x = self.conv(out_ch, 1, self.stride, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, train)
    return nn.relu(y + x)


def stage_planes(width: int, num_stages: int) -> tuple[int, ...]:
  """3x3 widths of the stages: width, 2 width, 4 width, ..."""
  return tuple(width * 2**i for i in range(num_stages))

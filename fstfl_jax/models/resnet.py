"""ResNet-50 pieces in torchvision v1.5 layout (stride on the 3x3 conv), NHWC.

Submodule names mirror torchvision's state_dict keys (`layer1.0.conv1` -> `layer1_0/conv1`,
`downsample.0/1` -> `downsample_conv/_bn`) so that `models/convert.py` maps 1:1.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fstfl_jax.models import layers
from fstfl_jax.models.gsf import GSF, gated_channels, interleave_order


class Bottleneck(nn.Module):
  """conv1 1x1 -> bn1 -> relu -> conv2 3x3/s -> bn2 -> relu -> conv3 1x1 -> [GSF] -> bn3 (+ input).

  With GSF, conv3 emits GSF's C_g gated channels and the pass-through channels as two arrays.

  `[N, H, W, C_in] -> [N, H/s, W/s, 4*planes]`, N = B*T frames.
  """
  planes: int
  stride: int
  cfg: Any
  use_gsf: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.cfg
    dtype = layers.compute_dtype(cfg)
    rows = cfg.bn_group_size * cfg.num_frames
    out_ch = 4 * self.planes
    y = layers.conv(self.planes, 1, dtype=dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(cfg, group_rows=rows, name="bn1")(y, train))
    y = layers.conv(self.planes, 3, self.stride, dtype=dtype, name="conv2")(y)
    y = nn.relu(layers.batch_norm(cfg, group_rows=rows, name="bn2")(y, train))
    bn3 = layers.batch_norm(cfg, group_rows=rows, name="bn3")
    if self.use_gsf:
      # conv3 emits GSF's gated channels (in GSF's output order) and the pass-through channels
      # as two arrays, and bn3 takes them as such: the wide activation is never sliced or
      # concatenated back before the residual add (docs/gsf.md#layout-on-accelerators).
      c_g = gated_channels(out_ch, cfg.gsf_ratio)
      columns = (tuple(int(i) for i in interleave_order(c_g)),) + (
        (tuple(range(c_g, out_ch)),) if c_g < out_ch else ())
      gated, *passed = layers.SplitConv(out_ch, 1, columns, dtype, name="conv3")(y)
      gated = GSF(num_frames=cfg.num_frames, cfg=cfg, name="gsf")(gated, train)
      y = jnp.concatenate(bn3((gated, *passed), train), axis=-1)
    else:
      y = bn3(layers.conv(out_ch, 1, dtype=dtype, name="conv3")(y), train)
    if x.shape[-1] != out_ch or self.stride != 1:
      x = layers.conv(out_ch, 1, self.stride, dtype=dtype, name="downsample_conv")(x)
      x = layers.batch_norm(cfg, group_rows=rows, name="downsample_bn")(x, train)
    return nn.relu(y + x)


def stage_planes(cfg: Any) -> tuple[int, ...]:
  return tuple(cfg.width * 2**i for i in range(len(cfg.stage_sizes)))

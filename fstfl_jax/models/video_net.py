"""The video classifier: ResNet-50 backbone (+GSF) (+STC) on folded frames, TSN consensus.

One module serves the three variants of the paper's tables:
  tsn:   plain ResNet-50, per-frame logits averaged over T;
  gsf:   GSF in all 16 bottlenecks (GSF-ResNet-50);
  fstfl: GSF-ResNet-50 with an STC after each stage in `stc.stages` (default res3).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fstfl_jax.models import layers
from fstfl_jax.models.gsf import GSF
from fstfl_jax.models.resnet import Bottleneck, stage_planes
from fstfl_jax.models.stc import STC, STCSettings

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# ImageNet statistics the ResNet-50 weights were trained with, per RGB channel in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(video: jax.Array) -> jax.Array:
  """Pixels in [0, 255] (uint8 or float) [..., 3] -> float32 with ImageNet mean/std."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return (jnp.asarray(video).astype(jnp.float32) - mean) / std


class BlockParts(NamedTuple):
  """The layer constructors every block of one VideoNet shares, settings bound."""
  conv: Callable[..., nn.Module]   # `layers.conv` in the compute dtype.
  norm: Callable[..., nn.Module]   # BatchNorm of folded frames [B*T, ...].
  gsf: Callable[..., nn.Module] | None  # GSF, or None without GSF.


def block_parts(net: "VideoNet", num_frames: int) -> BlockParts:
  """The conv/norm/GSF constructors of `net` for clips of `num_frames` frames (built once per
  call and passed down, so the blocks hold no model-wide settings of their own)."""
  conv = functools.partial(layers.conv, dtype=net.dtype)
  norm = functools.partial(layers.BatchNorm, momentum=net.bn_momentum, epsilon=net.bn_eps,
                           dtype=net.dtype)
  # Ghost BN groups count clips: bn_group_size * T rows of folded frames (GSF's BN3d included).
  norm = functools.partial(norm, group_rows=net.bn_group_size * num_frames)
  gsf = functools.partial(GSF, num_frames=num_frames, ratio=net.gsf_ratio, dtype=net.dtype,
                          norm=norm) if net.use_gsf else None
  return BlockParts(conv, norm, gsf)


class VideoNet(nn.Module):
  """`video [B, T, H, W, 3]` pixels in [0, 255] (uint8) -> logits `[B, num_classes]` (float32).

  T is read off the input (GSF and STC fold the batch with it); the model normalises the pixels
  itself, so callers hand it the frames as the input pipeline delivers them.

  Stage outputs and STC outputs are sown into the 'intermediates' collection under their
  stage names ("res2".."res5"; "res3_stc" after an STC) and can be perturbed (collection
  'perturbations') to take gradients with respect to them (Grad-CAM).

  Attributes (from `config.model` through `build_model`, meanings in configs/common.py):
    num_classes, stage_sizes, width, gsf_ratio, dropout, bn_momentum, bn_eps, bn_group_size.
    use_gsf: GSF in every bottleneck (gsf, fstfl).
    use_stc: an STC after every stage in `stc.stages` (fstfl).
    stc: the STC settings.
    dtype: compute dtype (parameters stay float32).
  """
  num_classes: int
  use_gsf: bool
  use_stc: bool
  stc: STCSettings
  stage_sizes: tuple[int, ...]
  width: int
  gsf_ratio: float
  dropout: float
  dtype: Any
  bn_momentum: float
  bn_eps: float
  bn_group_size: int

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {video.shape}.")
    b, t = video.shape[:2]
    stc_stages = tuple(self.stc.stages) if self.use_stc else ()
    unknown = set(stc_stages) - set(STAGE_NAMES[:len(self.stage_sizes)])
    if unknown:
      raise ValueError(f"stc.stages has unknown stages {sorted(unknown)}; expected {STAGE_NAMES}.")
    conv, frame_norm, gsf = block_parts(self, t)

    x = normalize(video).reshape((b * t,) + video.shape[2:]).astype(self.dtype)
    x = conv(self.width, 7, 2, name="conv1")(x)
    x = nn.relu(frame_norm(name="bn1")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # -inf padding, as torch.

    planes = stage_planes(self.width, len(self.stage_sizes))
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, planes)):
      stage_in = x
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(width, stride, conv, frame_norm, gsf, name=f"layer{i + 1}_{j}")(x, train)
      stage = STAGE_NAMES[i]
      x = self._tap(stage, x)
      if stage in stc_stages:
        x = STC(stage, self.stc, t, conv, frame_norm, self.dtype, name=f"stc_{stage}")(
          x, train, prev=stage_in if i else None)
        x = self._tap(f"{stage}_stc", x)

    x = x.mean(axis=(1, 2))  # [B*T, C]
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(1e-3), name="fc")(x)
    # TSN average consensus of per-frame logits (not of features).
    return logits.astype(jnp.float32).reshape(b, t, -1).mean(axis=1)

  def _tap(self, name: str, x: jax.Array) -> jax.Array:
    """Exposes a stage output for feature extraction and Grad-CAM; a no-op otherwise."""
    if self.is_initializing():
      return x
    self.sow("intermediates", name, x)
    return self.perturb(name, x)

"""The video classifier: ResNet-50 backbone (+GSF) (+STC) on folded frames, TSN consensus.

One module serves the three variants of the paper's tables:
  tsn:   plain ResNet-50, per-frame logits averaged over T;
  gsf:   GSF in all 16 bottlenecks (GSF-ResNet-50);
  fstfl: GSF-ResNet-50 with an STC after each stage in `cfg.stc.stages` (default res3).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fstfl_jax.models import layers
from fstfl_jax.models.resnet import Bottleneck, stage_planes
from fstfl_jax.models.stc import STC

STAGE_NAMES = ("res2", "res3", "res4", "res5")


class VideoNet(nn.Module):
  """`video [B, T, H, W, 3]` (normalised) -> logits `[B, num_classes]` (float32).

  Stage outputs and STC outputs are sown into the 'intermediates' collection under their
  stage names ("res2".."res5"; "res3_stc" after an STC) and can be perturbed (collection
  'perturbations') to take gradients with respect to them (Grad-CAM).
  """
  cfg: Any

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.cfg
    b, t = video.shape[:2]
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {video.shape}.")
    if t != cfg.num_frames:
      raise ValueError(
        f"video has {t} frames but model.num_frames={cfg.num_frames}: GSF and STC fold the batch "
        "with a static T; set --config.model.num_frames (and input.num_frames) to match.")
    dtype = layers.compute_dtype(cfg)
    rows = cfg.bn_group_size * t
    use_gsf = cfg.name in ("gsf", "fstfl")
    stc_stages = tuple(cfg.stc.stages) if cfg.name == "fstfl" else ()
    unknown = set(stc_stages) - set(STAGE_NAMES[:len(cfg.stage_sizes)])
    if unknown:
      raise ValueError(f"stc.stages has unknown stages {sorted(unknown)}; expected {STAGE_NAMES}.")

    x = video.reshape((b * t,) + video.shape[2:]).astype(dtype)
    x = layers.conv(cfg.width, 7, 2, dtype=dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(cfg, group_rows=rows, name="bn1")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # -inf padding, as torch.

    for i, (blocks, planes) in enumerate(zip(cfg.stage_sizes, stage_planes(cfg))):
      stage_in = x
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(planes, stride, cfg, use_gsf, name=f"layer{i + 1}_{j}")(x, train)
      stage = STAGE_NAMES[i]
      x = self._tap(stage, x)
      if stage in stc_stages:
        x = STC(stage, cfg, name=f"stc_{stage}")(x, train, prev=stage_in if i else None)
        x = self._tap(f"{stage}_stc", x)

    x = x.mean(axis=(1, 2))  # [B*T, C]
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    logits = nn.Dense(cfg.num_classes, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(1e-3), name="fc")(x)
    # TSN average consensus of per-frame logits (not of features).
    return logits.astype(jnp.float32).reshape(b, t, -1).mean(axis=1)

  def _tap(self, name: str, x: jax.Array) -> jax.Array:
    """Exposes a stage output for feature extraction and Grad-CAM; a no-op otherwise."""
    if self.is_initializing():
      return x
    self.sow("intermediates", name, x)
    return self.perturb(name, x)

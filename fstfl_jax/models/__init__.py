"""Model registry: `build_model(config.model)` -> a linen module."""

from typing import Any

import flax.linen as nn

from fstfl_jax.models.video_net import VideoNet

MODEL_NAMES = ("tsn", "gsf", "fstfl")


def build_model(cfg: Any) -> nn.Module:
  """Builds the `cfg.name` variant (tsn | gsf | fstfl) from the same VideoNet code."""
  if cfg.name not in MODEL_NAMES:
    raise ValueError(f"model.name={cfg.name!r}; expected one of {MODEL_NAMES}.")
  return VideoNet(cfg)

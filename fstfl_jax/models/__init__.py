"""Model registry: `build_model(config.model)` -> a linen module.

`build_model` is the only reader of the model's ConfigDict: the modules below it take typed
fields. The three variants of the paper's tables are partials of one class.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import ml_collections

from fstfl_jax.models import layers
from fstfl_jax.models.stc import STCSettings
from fstfl_jax.models.video_net import VideoNet

VARIANTS = {
  "tsn": functools.partial(VideoNet, use_gsf=False, use_stc=False),
  "gsf": functools.partial(VideoNet, use_gsf=True, use_stc=False),
  "fstfl": functools.partial(VideoNet, use_gsf=True, use_stc=True),
}


def _frozen(value: Any) -> Any:
  """Lists (e.g. from a config.json) -> tuples, a dict -> sorted (key, value) pairs."""
  if isinstance(value, dict):
    return tuple(sorted(value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(value)
  return value


def stc_settings(stc_cfg: ml_collections.ConfigDict) -> STCSettings:
  """`config.model.stc` -> the STC's typed settings; an unknown or missing key is named."""
  given = stc_cfg.to_dict()
  expected = {f.name for f in dataclasses.fields(STCSettings)}
  if set(given) != expected:
    raise ValueError(
      f"model.stc: unknown keys {sorted(set(given) - expected)}, missing keys "
      f"{sorted(expected - set(given))}; the keys are those of configs/common.py:stc_config.")
  return STCSettings(**{k: _frozen(v) for k, v in given.items()})


def build_model(cfg: ml_collections.ConfigDict) -> nn.Module:
  """Builds the `cfg.name` variant (tsn | gsf | fstfl) from `config.model`."""
  if cfg.name not in VARIANTS:
    raise ValueError(f"model.name={cfg.name!r}; expected one of {tuple(VARIANTS)}.")
  return VARIANTS[cfg.name](
    num_classes=cfg.num_classes, stc=stc_settings(cfg.stc), stage_sizes=tuple(cfg.stage_sizes),
    width=cfg.width, gsf_ratio=cfg.gsf_ratio, dropout=cfg.dropout,
    dtype=layers.dtype_from_name(cfg.dtype), bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps,
    bn_group_size=cfg.bn_group_size)

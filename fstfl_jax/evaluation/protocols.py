"""Test protocols: which views of a video the model scores, and the eval step of each protocol.

A protocol is an entry of `config.evals`, e.g.
  config.evals = {'val_1x1': dict(clips=1, crops=1), 'val_10x3': dict(clips=10, crops=3)}
Required keys: clips, crops (1, 3 or 10). Optional: split (default input.eval_split),
clip_sampling ('uniform' | 'random', default input.test_clip_sampling) and views_per_step
(views per model call, to bound memory). Validation during training uses `config.train_eval`,
or else the protocol with the fewest views. Each video is seen as V = clips * crops views; the
model classifies every view on its own and the video score is the mean of the raw view logits
(docs/data.md#test-views).
"""

from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from fstfl_jax.training import steps as steps_lib


def protocol_views(config: ml_collections.ConfigDict, name: str) -> tuple[int, int]:
  """(clips, crops) of protocol `name` of `config.evals`, with a clear error if it is missing."""
  evals = config.get("evals")
  if not evals or name not in evals:
    raise ValueError(f"No eval protocol {name!r}: config.evals has {sorted(evals or {})}; "
                     "expected entries like val_1x1=dict(clips=1, crops=1).")
  entry = evals[name]
  for key in ("clips", "crops"):
    if not isinstance(entry.get(key), int) or entry[key] < 1:
      raise ValueError(f"config.evals.{name}.{key} must be a positive int, got {entry.get(key)!r}.")
  return entry.clips, entry.crops


def protocol_input(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.input` with the overrides of `config.evals[name]` (split, clip_sampling)."""
  entry = config.evals[name]
  input_cfg = config.input.copy_and_resolve_references()
  if entry.get("split"):
    input_cfg.eval_split = entry.split
  if entry.get("clip_sampling"):
    input_cfg.test_clip_sampling = entry.clip_sampling
  return input_cfg


def training_protocol(config: ml_collections.ConfigDict) -> str:
  """The protocol validated during training: `config.train_eval`, else the one with fewest views."""
  if not config.get("evals"):
    raise ValueError("config.evals is empty; add e.g. val_1x1=dict(clips=1, crops=1).")
  if config.get("train_eval"):
    protocol_views(config, config.train_eval)
    return config.train_eval
  return min(config.evals, key=lambda n: (np.prod(protocol_views(config, n)), n))


def protocol_step(config: ml_collections.ConfigDict, name: str, model: Any) -> Callable[..., dict]:
  """The eval step of `model` with the views per call of protocol `config.evals[name]`."""
  return steps_lib.make_eval_step(model, config.model.num_classes,
                        config.evals[name].get("views_per_step"))


class EvalSteps:
  """The eval steps of one model by protocol, each built on first use and then reused.

  One run (validation during training, then the final evaluation of `--mode train_and_eval`)
  passes one of these to both, so each protocol's step is compiled once per run.
  """

  def __init__(self, config: ml_collections.ConfigDict, model: Any):
    self.model = model
    self._config = config
    self._steps: dict[str, Callable[..., dict]] = {}

  def __call__(self, name: str) -> Callable[..., dict]:
    if name not in self._steps:
      self._steps[name] = protocol_step(self._config, name, self.model)
    return self._steps[name]

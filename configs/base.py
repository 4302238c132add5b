"""The sections every dataset config shares: model + input + training recipe, variants applied.

Variants after the ':' of the config path (big_vision style), e.g.
  configs/sthv1.py:model=fstfl,frames=16,stc=res2-3
  model=tsn|gsf|fstfl   frames=T (model and input)   stc=res3|res2-4|none   runlocal
  recipe=paper|gsf_reference (gsf_reference: + RandAugment rand-m9-mstd0.5, weight decay 5e-4)

A dataset config calls `make_config` after stating its facts, then adds its eval protocols and
ends with `runlocal` (configs/sthv1.py is the shortest example).
"""

import ml_collections

from configs import common
from configs import recipe


def make_config(dataset: str, arg: ml_collections.ConfigDict, *, num_classes: int, flip: str,
                num_epochs: int = 60) -> ml_collections.ConfigDict:
  """Model, input and training sections for `dataset` with the variants `arg`
  (`common.parse_arg`) applied; no eval protocols and no `runlocal` yet."""
  config = ml_collections.ConfigDict()
  config.model = common.model_config(arg.model, num_classes, arg.frames)
  if arg.stc is not None:
    if arg.model != "fstfl":
      raise ValueError(f"Variant stc={arg.stc!r} needs model=fstfl, got model={arg.model!r}.")
    config.model.stc.stages = common.parse_stages(arg.stc)
  config.input = common.input_config(dataset, arg.frames, flip)
  recipe.add_training(config, num_epochs)
  recipe.apply_recipe(config, arg.recipe)
  return config


def runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few fast steps to check a setup end to end before launching the real job (in place).

  Applied last, after every dataset-specific value, so that it wins.
  """
  config.input.batch_size = config.input.eval_batch_size = 2
  config.train.num_train_steps = 4
  config.train.log_every_steps = 1
  return config

"""Assembles a full config for one dataset: model + input + recipe + evaluation protocols.

Variants after the ':' of the config path (big_vision style), e.g.
  configs/sthv1.py:model=fstfl,frames=16,stc=res2-3
  model=tsn|gsf|fstfl   frames=T (model and input)   stc=res3|res2-4|none   runlocal
  recipe=paper|gsf_reference (gsf_reference: + RandAugment rand-m9-mstd0.5, weight decay 5e-4)
"""

import ml_collections

from configs import common
from configs import recipe

# The paper's test protocols (§4.3): name -> views; every protocol also reports top-5 and
# mean class accuracy. "random" clips are independent TSN draws (Sth-Sth, as in GSF's code).
EVALS = {
  "sthv1": {"val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
            "val_10x3": dict(clips=10, crops=3, clip_sampling="random")},
  "sthv2": {"val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
            "val_10x3": dict(clips=10, crops=3, clip_sampling="random")},
  "k400": {"val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
           "val_10x1": dict(clips=10, crops=1, clip_sampling="uniform"),
           "val_10x3": dict(clips=10, crops=3, clip_sampling="uniform")},
  "ucf101": {"val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
             "val_2x3": dict(clips=2, crops=3, clip_sampling="uniform")},
  "demo": {"val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
           "val_2x3": dict(clips=2, crops=3, clip_sampling="uniform")},
}
# Protocol evaluated during training (cheap); the others run with --mode eval.
TRAIN_EVAL = "val_1x1"


def make_config(dataset: str, arg: str | None, *, default_model: str = "fstfl",
                default_frames: int = 8) -> ml_collections.ConfigDict:
  """The config of `dataset` with variants `arg` applied."""
  variants = common.parse_arg(arg)
  name = variants.get("model", default_model)
  frames = variants.get("frames", default_frames)
  facts = common.DATASETS[dataset]

  config = ml_collections.ConfigDict()
  config.dataset = dataset
  config.model = common.model_config(name, facts["num_classes"], frames)
  if "stc" in variants:
    if name != "fstfl":
      raise ValueError(f"Variant stc={variants['stc']!r} needs model=fstfl, got model={name!r}.")
    config.model.stc.stages = common.parse_stages(variants["stc"])
  config.input = common.input_config(dataset, frames)
  recipe.add_training(config, dataset)
  recipe.apply_recipe(config, variants.get("recipe", "paper"))
  if dataset == "ucf101":
    config.model.dropout = 0.8  # Paper §4.2: fine-tuned from Kinetics-400 with dropout 0.8.
  config.evals = ml_collections.ConfigDict(EVALS[dataset])
  config.train_eval = TRAIN_EVAL

  if variants.get("runlocal", False):
    # A few fast steps to check a setup end to end before launching the real job.
    config.input.batch_size = config.input.eval_batch_size = 2
    config.train.num_train_steps = 4
    config.train.log_every_steps = 1
  return config

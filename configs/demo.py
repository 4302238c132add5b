"""Offline demo: a tiny FSTFL-Net on synthetic motion-defined classes (no download).

  python -m data_pipelines.make_demo --out demo_data
  python -m fstfl_jax.main --config configs/demo.py --workdir workdirs/demo --mode train_and_eval

The 12 classes share appearance statistics and differ only in motion (left/right, up/down,
fast, "pretending", rotation, approach/recede, still), so a single frame carries no label
information. Variants as for the dataset configs: configs/demo.py:model=tsn|gsf|fstfl.
"""

import ml_collections

from configs import base
from configs import common

# Facts: the defaults of `data_pipelines.make_demo` (12 classes x 150 train / 16 validation
# clips, no mirror-image class pairs to swap).
NUM_CLASSES = 12
TRAIN_SIZE, VAL_SIZE = 1800, 192
FLIP = "none"
EVALS = {
  "val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
  "val_2x3": dict(clips=2, crops=3, clip_sampling="uniform"),
}


def get_config(arg=None):
  arg = common.parse_arg(arg)
  config = base.make_config("demo", arg, num_classes=NUM_CLASSES, flip=FLIP)
  model = config.model
  model.width = 16
  model.stage_sizes = (1, 1, 1, 1)
  model.dropout = 0.2
  # res3 of a 64x64 input is 8x8: a 5x5 window covers the motion between sampled frames.
  model.stc.max_disp = 2

  inp = config.input
  inp.data_dir = "demo_data"
  inp.crop_size = 64
  inp.resize_short = 64
  inp.scales = (1.0, 0.875)
  inp.batch_size = 16
  inp.eval_batch_size = 16
  inp.num_threads = 2

  config.optim.base_lr = 0.1
  config.optim.base_batch = 16
  # 5 epochs of 1800 clips at lr 0.1: enough to learn motion (at lr 0.02 for 3 epochs the loss
  # stayed at chance). With fewer videos the tiny net memorises
  # each clip's random texture instead (train 98%, validation at chance).
  config.optim.num_epochs = 5
  config.optim.warmup_epochs = 1
  config.optim.weight_decay = 1e-4
  config.train.log_every_steps = 10
  config.train.eval_every_epochs = 1
  config.checkpoint.every_steps = 100

  config.evals = ml_collections.ConfigDict(EVALS)
  config.train_eval = "val_1x1"  # Validated after every epoch; val_2x3 at the end of main's run.
  return base.runlocal(config) if arg.runlocal else config

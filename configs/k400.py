"""Kinetics-400 (400 classes; paper Tables 2, 4).

  python -m data_pipelines.build --dataset k400 --src /path/to/kinetics400 --out data/k400
  # FSTFL-Net 8 frames (Table 4: 75.48 / 92.12 top-1/5, 10 clips x 3 crops in the paper):
  python -m fstfl_jax.main --config configs/k400.py:model=fstfl,frames=8 --workdir wd/k400_fstfl8 \
      --config.init_imagenet=resnet50_imagenet.msgpack
  python -m fstfl_jax.main --config configs/k400.py:model=fstfl,frames=8 --workdir wd/k400_fstfl8 \
      --mode eval --eval_protocol val_10x3
"""

import ml_collections

from configs import base
from configs import common

# Facts: class count and split sizes as published (training uses the data dir's own sizes).
NUM_CLASSES = 400
TRAIN_SIZE, VAL_SIZE = 240_436, 19_787
FLIP = "flip"
# Test protocols (paper §4.3): name -> views; every protocol also reports top-5 and mean class
# accuracy.
EVALS = {
  "val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
  # views_per_step: views per model call, to fit a 16 GB chip at 16 frames (as in sthv1.py).
  "val_10x1": dict(clips=10, crops=1, clip_sampling="uniform", views_per_step=2),
  "val_10x3": dict(clips=10, crops=3, clip_sampling="uniform", views_per_step=3),
}


def get_config(arg=None):
  arg = common.parse_arg(arg)
  config = base.make_config("k400", arg, num_classes=NUM_CLASSES, flip=FLIP)
  config.evals = ml_collections.ConfigDict(EVALS)
  config.train_eval = "val_1x1"  # Validated during training (cheap); the others: --mode eval.
  return base.runlocal(config) if arg.runlocal else config

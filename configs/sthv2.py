"""Something-Something V2 (174 classes; paper Tables 2, 3).

  # Build the shards once (<id>.webm videos + the official JSONs):
  python -m data_pipelines.build --dataset sthv2 --src /path/to/sthv2 --out data/sthv2
  # FSTFL-Net 8 frames (Table 3: 62.53 / 88.04 top-1/5 1x1 in the paper):
  python -m fstfl_jax.main --config configs/sthv2.py:model=fstfl,frames=8 --workdir wd/sthv2 \
      --config.init_imagenet=resnet50_imagenet.msgpack
  # Baselines and ablations: model=gsf|tsn, frames=16|32, stc=res2-3 etc.
"""

import ml_collections

from configs import base
from configs import common

# Facts: class count and split sizes as published (training uses the data dir's own sizes).
NUM_CLASSES = 174
TRAIN_SIZE, VAL_SIZE = 168_913, 24_777
FLIP = "flip_swap_labels"
# Test protocols (paper §4.3): name -> views; every protocol also reports top-5 and mean class
# accuracy.
EVALS = {
  "val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
  # "random": independent TSN draws per clip, as GSF's code tests Something-Something.
  "val_10x3": dict(clips=10, crops=3, clip_sampling="random"),
}


def get_config(arg=None):
  arg = common.parse_arg(arg)
  config = base.make_config("sthv2", arg, num_classes=NUM_CLASSES, flip=FLIP)
  config.evals = ml_collections.ConfigDict(EVALS)
  config.train_eval = "val_1x1"  # Validated during training (cheap); the others: --mode eval.
  return base.runlocal(config) if arg.runlocal else config

"""Kinetics-400 (400 classes; paper Tables 2, 4).

  python -m data_pipelines.build --dataset k400 --src /path/to/kinetics400 --out data/k400
  # FSTFL-Net 8 frames (Table 4: 75.48 / 92.12 top-1/5, 10 clips x 3 crops in the paper):
  python -m fstfl_jax.main --config configs/k400.py:model=fstfl,frames=8 --workdir wd/k400_fstfl8 \
      --config.init_imagenet=resnet50_imagenet.msgpack
  python -m fstfl_jax.main --config configs/k400.py:model=fstfl,frames=8 --workdir wd/k400_fstfl8 \
      --mode eval --eval_protocol val_10x3
"""

from configs import base


def get_config(arg=None):
  return base.make_config("k400", arg)

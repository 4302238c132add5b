"""Something-Something V2 (174 classes; paper Tables 2, 3).

  # Build the shards once (<id>.webm videos + the official JSONs):
  python -m data_pipelines.build --dataset sthv2 --src /path/to/sthv2 --out data/sthv2
  # FSTFL-Net 8 frames (Table 3: 62.53 / 88.04 top-1/5 1x1 in the paper):
  python -m fstfl_jax.main --config configs/sthv2.py:model=fstfl,frames=8 --workdir wd/sthv2 \
      --config.init_imagenet=resnet50_imagenet.msgpack
  # Baselines and ablations: model=gsf|tsn, frames=16|32, stc=res2-3 etc.
"""

from configs import base


def get_config(arg=None):
  return base.make_config("sthv2", arg)

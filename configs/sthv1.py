"""Something-Something V1 (174 classes; paper Tables 2, 3, 6).

  # Build the shards once (frame folders + the official CSVs):
  python -m data_pipelines.build --dataset sthv1 --src /path/to/sthv1 --out data/sthv1
  # FSTFL-Net 8 frames (Table 3: 51.01 / 79.56 top-1/5 1x1 in the paper):
  python -m fstfl_jax.main --config configs/sthv1.py:model=fstfl,frames=8 --workdir wd/sthv1 \
      --config.init_imagenet=resnet50_imagenet.msgpack
  # Baselines and ablations: model=gsf|tsn, frames=16|32, stc=res2|res4|res5|res2-3|res2-4|res2-5
"""

from configs import base


def get_config(arg=None):
  return base.make_config("sthv1", arg)

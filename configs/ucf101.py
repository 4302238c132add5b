"""UCF-101 split 1 (101 classes; paper Table 5: 96.86% top-1, 2 clips x 3 crops).

Fine-tuned from a Kinetics-400 run for 40 epochs with dropout 0.8 (paper §4.2):

  python -m data_pipelines.build --dataset ucf101 --src /path/to/UCF101 --out data/ucf101 \
      --split-id 1
  python -m fstfl_jax.main --config configs/ucf101.py:model=fstfl,frames=8 --workdir wd/ucf_fstfl8 \
      --config.init_from=wd/k400_fstfl8
"""

from configs import base


def get_config(arg=None):
  return base.make_config("ucf101", arg)

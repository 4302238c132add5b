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
# What `scripts/demo.sh` prints as val_1x1 top-1 (%) on a correct install: measured on a 2-core
# CPU over seeds 0-4 (`--config.train.seed=S --config.input.shuffle_seed=S`; seed 0 is the demo)
# with `python -m benchmarks.motion_ablation --models fstfl --seeds 0-4 --curves`
# (docs/results.md). Another machine rounds differently and draws another sample from this
# distribution, so the range stated to users is the measured one widened by one sd each way.
MEASURED_TOP1 = dict(runs=5, mean=91.0, sd=1.7, min=89.1, max=93.8)
EXPECTED_TOP1 = (87.0, 96.0)
EVALS = {
  "val_1x1": dict(clips=1, crops=1, clip_sampling="uniform"),
  "val_2x3": dict(clips=2, crops=3, clip_sampling="uniform"),
}


def expected_result() -> str:
  """The line `scripts/demo.sh` prints after the demo's own result."""
  m = MEASURED_TOP1
  return (f"A correct install prints val_1x1 top-1 between {EXPECTED_TOP1[0]:.0f}% and "
          f"{EXPECTED_TOP1[1]:.0f}% (measured over {m['runs']} seeds: "
          f"{m['mean']:.1f} ± {m['sd']:.1f}%, min {m['min']:.1f}%, max {m['max']:.1f}%; "
          "docs/results.md).")


def get_config(arg=None):
  arg = common.parse_arg(arg)
  config = base.make_config("demo", arg, num_classes=NUM_CLASSES, flip=FLIP)
  model = config.model
  model.width = 16
  model.stage_sizes = (1, 1, 1, 1)
  model.dropout = 0.2
  # res3 of a 32x32 input is 4x4 (stride 8): a 5x5 window covers every displacement there.
  model.stc.max_disp = 2

  inp = config.input
  inp.data_dir = "demo_data"
  # 32x32 (make_demo's default size): a train step costs a quarter of one at 64x64, so the
  # main job's minutes buy enough epochs for every seed to converge (docs/results.md).
  inp.crop_size = 32
  inp.resize_short = 32
  inp.scales = (1.0, 0.875)
  inp.batch_size = 16
  inp.eval_batch_size = 16
  inp.num_threads = 2

  # 12 epochs: with 8, validation was still rising when the cosine schedule ended, and the seeds
  # that left the chance plateau late stopped 10 points lower, with move up / move down
  # partly confused. lr 0.05 rather than 0.1, at which validation swung between epochs while
  # the lr was high. Either way the loss rises above chance (ln 12) near the end of warm-up,
  # before any motion is learnt (docs/results.md). With fewer videos the tiny net memorises
  # each clip's random texture instead (train 98%, validation at chance).
  config.optim.base_lr = 0.05
  config.optim.base_batch = 16
  config.optim.num_epochs = 12
  config.optim.warmup_epochs = 1
  config.optim.weight_decay = 1e-4
  config.train.log_every_steps = 10
  config.train.eval_every_epochs = 1
  config.checkpoint.every_steps = 100

  config.evals = ml_collections.ConfigDict(EVALS)
  config.train_eval = "val_1x1"  # Validated after every epoch; val_2x3 at the end of main's run.
  return base.runlocal(config) if arg.runlocal else config

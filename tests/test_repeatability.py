"""Same command, same seed -> the same losses and eval results, bit for bit, on CPU.

The run goes through everything `python -m fstfl_jax.main --mode train_and_eval` does: the real
grain pipeline with reader threads (flip and RandAugment on), the jitted data-parallel FSTFL step
on 8 emulated devices, validation during training and the final checkpoint evaluation.
"""

import json
import os

import numpy as np

from fstfl_jax.apps import experiment
from fstfl_jax.training import logs

import test_checkpointing  # noqa: E402  (tests/ is on sys.path)
import test_pipeline  # noqa: E402

STEPS = 4


def config(data_dir):
  cfg = test_checkpointing.tiny_config("fstfl")
  cfg.model.num_classes = len(test_pipeline.CLASS_NAMES)
  cfg.model.stc.max_disp = 1
  cfg.input.update(dict(data_dir=data_dir, crop_size=32, resize_short=32, batch_size=8,
                        eval_batch_size=8, num_threads=2, flip="flip",
                        randaugment="rand-m9-mstd0.5"))
  cfg.train.update(num_train_examples=16, num_train_steps=STEPS, eval_every_epochs=1)
  cfg.checkpoint.update(every_steps=0, async_save=False)
  cfg.evals = dict(val_1x1=dict(clips=1, crops=1))
  cfg.train_eval = "val_1x1"
  return cfg


def run(data_dir, workdir):
  """Trains and evaluates; returns (metrics.jsonl rows without wall-clock fields, eval result)."""
  cfg = config(data_dir)
  experiment.train_and_evaluate(cfg, str(workdir), with_eval=True)
  result = experiment.evaluate_checkpoint(cfg, str(workdir), protocol="val_1x1",
                                          with_predictions=True)
  with open(os.path.join(workdir, logs.METRICS_FILE), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    for key in ("clips_per_sec", "input_wait_fraction", "device_wait_fraction"):
      row.pop(f"train/{key}", None)
  return rows, result["val_1x1"]


def test_two_runs_with_the_same_seed_are_identical(tmp_path):
  train_videos = [test_pipeline.make_record(v) for v in range(test_pipeline.NUM_TRAIN)]
  val_videos = [test_pipeline.make_record(v) for v in range(test_pipeline.NUM_VAL)]
  data_dir = test_pipeline.write_dataset(tmp_path / "data", train_videos, val_videos)
  rows_a, eval_a = run(data_dir, tmp_path / "a")
  rows_b, eval_b = run(data_dir, tmp_path / "b")

  steps = [r["step"] for r in rows_a if "train/loss" in r]
  assert steps == list(range(1, STEPS + 1))
  assert sum("val/top1" in r for r in rows_a) == 2  # Validated after epochs 1 and 2.
  assert rows_a == rows_b  # Every logged loss, accuracy, grad norm and validation metric.
  losses = [r["train/loss"] for r in rows_a if "train/loss" in r]
  assert len(set(losses)) == STEPS  # The model trains: losses change from step to step.
  for key in ("top1", "top5", "mean_class_accuracy", "loss", "num_videos"):
    assert eval_a[key] == eval_b[key], key
  np.testing.assert_array_equal(eval_a["confusion"], eval_b["confusion"])
  assert eval_a["predictions"] == eval_b["predictions"]  # Logits of every video, bit for bit.

"""Startup check of the config against the data dir: one clear line per mismatch, real sizes."""

import logging
import os

import ml_collections
import pytest

from configs import base
from configs import common
from configs import demo
from data_pipelines import build
from fstfl_jax.apps import consistency
from fstfl_jax.apps import experiment
from fstfl_jax.training import checkpointing
from fstfl_jax.training import train
import video_fixtures

CLASSES = ("ant", "bee", "cat")
HEIGHT, WIDTH = 40, 56  # Stored as is: the short side 40 is below the builder's cap.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  for split, per_class in (("train", 3), ("validation", 1)):
    for c, cls in enumerate(CLASSES):
      for k in range(per_class):
        video_fixtures.write_video(str(src / split / cls / f"{k}.avi"), num_frames=8,
                                   height=HEIGHT, width=WIDTH, seed=c * 10 + k)
  out = str(tmp_path_factory.mktemp("data"))
  build.build("folder", str(src), out, workers=0)
  return out


def _config(data_dir):
  # The demo's facts and protocols with the paper's recipe.
  config = base.make_config("demo", common.parse_arg("model=tsn,frames=4"),
                           num_classes=demo.NUM_CLASSES, flip=demo.FLIP)
  config.evals, config.train_eval = ml_collections.ConfigDict(demo.EVALS), "val_1x1"
  config.model.update(num_classes=len(CLASSES), width=8, stage_sizes=(1, 1, 1, 1))
  config.input.update(data_dir=data_dir, crop_size=32, resize_short=40, batch_size=8,
                      eval_batch_size=8)
  return config


def test_matching_config_gets_the_real_train_size(data_dir):
  config = _config(data_dir)
  assert config.train.num_train_examples == 0  # The dataset configs' default: follow the data.
  checked = consistency.check(config, train=True, eval_protocols=["val_1x1"])
  assert checked.train.num_train_examples == 3 * len(CLASSES)
  assert config.train.num_train_examples == 0  # The caller's config is not modified.
  assert train.steps_per_epoch(checked) == 1


def test_published_size_override_is_kept_with_a_warning(data_dir, caplog):
  config = _config(data_dir)
  config.train.num_train_examples = 86_017  # e.g. configs/sthv1.py's published size.
  with caplog.at_level(logging.WARNING):
    checked = consistency.check(config, train=True)
  assert checked.train.num_train_examples == 86_017
  assert "num_train_examples=86017 differs from the 9 records" in caplog.text


def test_every_mismatch_is_one_line_with_both_values_and_the_flag(data_dir):
  config = _config(data_dir)
  config.model.num_classes = 5
  config.model.num_frames = 8
  config.input.crop_size = 48
  config.evals.val_1x1.split = "test"
  with pytest.raises(consistency.ConsistencyError) as caught:
    consistency.check(config, train=True, eval_protocols=["val_1x1"])
  lines = str(caught.value).splitlines()[1:]
  assert len(lines) == 4, lines
  want = [("num_classes=5", "has 3 classes", "--config.model.num_classes=3"),
          ("model.num_frames=8", "input.num_frames=4", "--config.input.num_frames=8"),
          ("evals.val_1x1.split='test'", "['train', 'validation']",
           "--config.evals.val_1x1.split="),
          ("crop_size=48", "short side of 40", "--config.input.crop_size=40")]
  for line, parts in zip(lines, want):
    assert all(p in line for p in parts), (line, parts)


def test_training_and_eval_stop_before_any_work(data_dir, tmp_path):
  config = _config(data_dir)
  config.model.num_classes = 2  # A 2-way head on 3-class data used to train on bad labels.
  with pytest.raises(consistency.ConsistencyError, match="--config.model.num_classes=3"):
    experiment.train_and_evaluate(config, str(tmp_path), with_eval=False)
  assert not os.path.exists(checkpointing.checkpoint_dir(str(tmp_path)))
  with pytest.raises(consistency.ConsistencyError, match="--config.model.num_classes=3"):
    experiment.evaluate_checkpoint(config, str(tmp_path))  # Before looking for a checkpoint.


def test_batch_sizes_that_do_not_split_over_the_devices_stop_before_any_work(data_dir, tmp_path):
  config = _config(data_dir)
  config.input.update(batch_size=12, eval_batch_size=6)
  with pytest.raises(consistency.ConsistencyError) as caught:
    consistency.check(config, train=True, eval_protocols=["val_1x1"], num_devices=8)
  lines = str(caught.value).splitlines()[1:]
  assert len(lines) == 2, lines
  assert "batch_size=12 does not split evenly over the 8 devices" in lines[0]
  assert "--config.input.batch_size=16" in lines[0]
  assert "eval_batch_size=6" in lines[1] and "--config.input.eval_batch_size=8" in lines[1]
  # The run's own mesh (the 8 devices of the test process) is what is checked.
  with pytest.raises(consistency.ConsistencyError, match="--config.input.batch_size=16"):
    experiment.train_and_evaluate(config, str(tmp_path), with_eval=False)
  assert not os.path.exists(checkpointing.checkpoint_dir(str(tmp_path)))

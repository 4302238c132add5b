"""CLI smoke: build a tiny demo dataset, train 2 steps, evaluate the checkpoint; bad config keys.

Everything runs through `python -m ...` subprocesses, exactly as the README commands do, with 2
emulated devices so the batch is really sharded.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = [
  "--config", "configs/demo.py:frames=4",
  "--config.model.width=8", "--config.model.stc.max_disp=1",
  "--config.input.crop_size=32", "--config.input.resize_short=32",
  "--config.input.batch_size=8", "--config.input.eval_batch_size=8",
  "--config.train.num_train_examples=24", "--config.train.num_train_steps=2",
  "--config.train.log_every_steps=1",
]


def _run(*args, check=True):
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(2),
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  if check and proc.returncode:
    raise AssertionError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo_data")
  _run("data_pipelines.make_demo", "--out", str(out), "--videos_per_class", "2",
       "--val_videos_per_class", "1", "--size", "32", "--frames", "8", "--workers", "0")
  return out


def test_train_then_eval(demo_data, tmp_path):
  workdir = tmp_path / "run"
  common = ["fstfl_jax.main", *TINY, f"--config.input.data_dir={demo_data}",
            "--workdir", str(workdir)]
  _run(*common, "--mode", "train_and_eval")
  assert (workdir / "checkpoints" / "2" / "state").is_dir()
  assert (workdir / "checkpoints" / "2" / "data").is_dir()
  assert json.loads((workdir / "config.json").read_text())["train"]["num_train_steps"] == 2
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
  val = [r for r in rows if "val/top1" in r]
  assert len(val) == 1 and val[0]["step"] == 2 and 0.0 <= val[0]["val/top1"] <= 1.0
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

  _run(*common, "--mode", "eval")
  result = json.loads((workdir / "eval_val_1x1_step2.json").read_text())
  assert result["num_videos"] == 12  # 12 classes x 1 validation video, each counted once.
  # The in-training validation and the eval of the restored checkpoint see the same model.
  assert result["top1"] == pytest.approx(val[0]["val/top1"])


def test_unknown_config_key_fails_clearly(tmp_path):
  proc = _run("fstfl_jax.main", "--config", "configs/demo.py", "--config.foo=1",
              "--workdir", str(tmp_path / "bad"), check=False)
  assert proc.returncode != 0
  assert "unknown config key 'foo'" in proc.stderr
  assert not (tmp_path / "bad").exists()

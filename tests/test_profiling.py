"""A profiler trace of chosen steps (local and gs:// workdirs) and the input-wait fractions."""

import json

import pytest

import test_checkpointing
from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.training import logs
from fstfl_jax.training import profiling


def _run(workdir: str) -> list[dict]:
  config = test_checkpointing.tiny_config()
  config.train.update(num_train_steps=3, profile_steps="1:3")
  test_checkpointing.run(workdir, config=config)
  return [json.loads(line) for line in
          storage.read_text(f"{workdir}/{logs.METRICS_FILE}").splitlines()]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_trace_of_chosen_steps_and_wait_fractions(where, tmp_path, gcs):
  workdir = str(tmp_path / "run") if where == "local" else f"{gcs}/profiled/run"
  rows = _run(workdir)
  traces = [p for p in storage.walk_files(f"{workdir}/{profiling.PROFILE_DIR}")
            if p.endswith(".xplane.pb")]
  assert len(traces) == 1 and "/plugins/profile/" in traces[0]
  assert storage.size(traces[0]) > 1000
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3]
  for row in train:
    for key in ("train/input_wait_fraction", "train/device_wait_fraction"):
      assert 0.0 <= row[key] <= 1.0, (key, row[key])
    assert row["train/input_wait_fraction"] + row["train/device_wait_fraction"] <= 1.0 + 1e-6


@pytest.mark.parametrize("spec", ["3", "5:5", "a:b", "-1:2", "2:1"])
def test_bad_profile_steps_are_one_clear_error(spec):
  with pytest.raises(cli.UserError, match=r"profile_steps=.*expected 'a:b'"):
    profiling.parse_steps(spec)
  assert list(profiling.parse_steps("2:5")) == [2, 3, 4] and not profiling.parse_steps("")

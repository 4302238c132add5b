"""A run whose workdir is a gs:// bucket, end to end, against a GCS server on 127.0.0.1.

Everything goes through the real command lines in subprocesses started in an empty working
directory: train the demo model with `--workdir gs://...`, kill -9 it after a checkpoint,
resume, evaluate with `--mode eval`, classify a video (local and in the bucket) with `predict`.
Every artifact must be in the bucket, and nothing named after the URL may appear on local disk.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import fsspec
import pytest

import test_cli
import xla_env
from data_pipelines import cli
from data_pipelines import storage

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 12


def _env() -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS=xla_env.xla_flags(2), JAX_PLATFORMS="cpu",
              PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _run(cwd, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=_env(), capture_output=True,
                        text=True, timeout=900)
  if check and proc.returncode:
    raise AssertionError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def _committed_steps(workdir: str) -> list[int]:
  # Other processes write the bucket, and a filesystem instance caches its listings: list with
  # a new, uncached instance every time.
  fs = fsspec.filesystem("gs", skip_instance_cache=True)
  names = [p.split("/checkpoints/", 1)[1] for p in fs.find(f"{workdir}/checkpoints")]
  return sorted(int(n.split("/")[0]) for n in names if re.fullmatch(r"\d+/commit_success.txt", n))


def test_gs_workdir_train_kill_resume_eval_predict(gcs, tmp_path):
  assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
  data = tmp_path / "data"
  _run(ROOT, "data_pipelines.make_demo", "--out", str(data), "--videos_per_class", "2",
       "--val_videos_per_class", "1", "--size", "32", "--frames", "8", "--workers", "0")
  cwd = tmp_path / "cwd"  # Empty: a stray local "gs:" tree would appear here.
  cwd.mkdir()
  workdir = f"{gcs}/runs/demo"
  train = ["fstfl_jax.main", *test_cli.TINY, f"--config.train.num_train_steps={STEPS}",
           "--config.checkpoint.every_steps=2", f"--config.input.data_dir={data}",
           "--workdir", workdir, "--mode", "train"]

  # Kill -9 once a checkpoint is committed, while later steps are still to come.
  log = tmp_path / "killed_run.log"  # A file, not a pipe: a full pipe would block the run.
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, "-m", *train], cwd=cwd, env=_env(),
                            stdout=f, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 600
    while not _committed_steps(workdir):
      assert proc.poll() is None, f"training ended before a checkpoint:\n{log.read_text()}"
      assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
      time.sleep(0.1)
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  killed_at = max(_committed_steps(workdir))
  assert killed_at < STEPS, "training finished before the kill: nothing was resumed"

  resumed = _run(cwd, *train)
  assert f"resuming at step {killed_at}" in resumed.stderr
  committed = _committed_steps(workdir)
  assert committed and max(committed) == STEPS, (
    f"committed steps {committed}; objects under checkpoints/: "
    f"{sorted(fsspec.filesystem('gs').find(f'{workdir}/checkpoints'))}\n{resumed.stderr[-3000:]}")
  rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, STEPS + 1))

  _run(cwd, "fstfl_jax.main", *test_cli.TINY, f"--config.input.data_dir={data}",
       "--workdir", workdir, "--mode", "eval", "--eval_predictions")
  result = storage.read_json(f"{workdir}/eval_val_1x1_step{STEPS}.json")
  assert result["num_videos"] == 12

  video = next((data / "raw" / "validation").rglob("*.mp4"))
  remote_video = f"{gcs}/videos/{video.name}"
  storage.write_bytes(remote_video, video.read_bytes())
  out = _run(cwd, "fstfl_jax.apps.predict", "--workdir", workdir, "--video", str(video),
             "--video", remote_video, "--json").stdout
  lines = [json.loads(line) for line in out.splitlines()]
  assert [r["video"] for r in lines] == [str(video), remote_video]
  assert lines[0]["topk"] == lines[1]["topk"] and lines[0]["step"] == STEPS

  fs = fsspec.filesystem("gs", skip_instance_cache=True)  # Uncached, as in _committed_steps.
  names = {p.rstrip("/").rsplit("/", 1)[1] for p in fs.ls(workdir)}
  assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints",
          f"eval_val_1x1_step{STEPS}.json", f"eval_val_1x1_step{STEPS}_confusion.png",
          f"eval_val_1x1_step{STEPS}_predictions.jsonl"} <= names
  events = fs.ls(f"{workdir}/tensorboard")
  assert len(events) == 2  # One event file per run (the killed one and the resumed one).
  assert not list(cwd.rglob("*")), f"local files appeared: {list(cwd.rglob('*'))}"
  assert not any("gs:" in p.name for p in ROOT.iterdir())


@pytest.mark.parametrize("mistake, args, expected, status", [
  ("variant", ["--config", "configs/demo.py:modl=gsf", "--workdir", "W"],
   "Unknown config variant 'modl'", cli.USAGE_STATUS),
  ("data dir", ["--config", "configs/demo.py", "--config.input.data_dir=/no/such",
                "--workdir", "W"], "data dir /no/such: no such directory", cli.ERROR_STATUS),
  ("eval without checkpoints", ["--config", "configs/demo.py", "--workdir", "W",
                                "--mode", "eval"], "--mode eval: no checkpoints in --workdir",
   cli.ERROR_STATUS),
])
def test_common_mistakes_are_one_error_line(mistake, args, expected, status, tmp_path):
  del mistake
  data = tmp_path / "data"
  if "eval" in args:  # Needs a real data dir to get as far as the checkpoint check.
    _run(ROOT, "data_pipelines.make_demo", "--out", str(data), "--videos_per_class", "1",
         "--val_videos_per_class", "1", "--size", "32", "--frames", "4", "--workers", "0")
    args = [*args, f"--config.input.data_dir={data}"]
  args = [str(tmp_path / "wd") if a == "W" else a for a in args]
  proc = _run(tmp_path, "fstfl_jax.main", *args, check=False)
  assert proc.returncode == status
  assert expected in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("fstfl-train: error: ")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "wd").exists()  # Nothing written, not even config.json.

"""Pre-emption of one process of a 2-process job, through the real command line.

Two `python -m fstfl_jax.main` processes (one CPU device each) joined by jax.distributed on
127.0.0.1, exactly the multi-process recipe of docs/usage.md. SIGTERM goes to process 1 only,
between log steps; JAX's pre-emption sync point makes both processes save the same step and exit
0.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import portpicker

import test_cli
import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  data = tmp_path / "data"
  test_cli._run("data_pipelines.make_demo", "--out", str(data), "--videos_per_class", "2",
                "--val_videos_per_class", "1", "--size", "32", "--frames", "8", "--workers", "0")
  workdir = tmp_path / "run"
  port = portpicker.pick_unused_port()
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(1), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, "w") as f:  # Files, not pipes: a full pipe would block a process.
      procs.append(subprocess.Popen(
        [sys.executable, "-m", "fstfl_jax.main", *test_cli.TINY,
         "--config.train.num_train_steps=100000", "--config.train.log_every_steps=1000",
         "--config.checkpoint.every_steps=0", f"--config.input.data_dir={data}",
         "--workdir", str(workdir), "--mode", "train", "--coordinator_address",
         f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
        cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
  try:
    deadline = time.monotonic() + 600
    while "Compiled in" not in logs[1].read_text():
      assert all(p.poll() is None for p in procs), logs[1].read_text()[-3000:]
      assert time.monotonic() < deadline, "no compiled step within 10 minutes"
      time.sleep(0.2)
    time.sleep(2)  # A few steps in, far from any log or checkpoint step.
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [log.read_text() for log in logs]
  assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) == 1 and 0 < steps[0] < 1000, steps
  for text in texts:
    assert f"Stopped by pre-emption after step {steps[0]}; checkpoint saved." in text
  saved = workdir / "checkpoints" / str(steps[0]) / "data"
  data_files = sorted(p.name for p in saved.glob("*.json"))
  assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
  # The stop step was logged: the metrics end exactly at the saved step.
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == steps[0]

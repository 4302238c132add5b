"""Two processes (2 CPU devices each) joined by jax.distributed train exactly like one process.

Each worker is this file run as a script: it starts `jax.distributed` on 127.0.0.1, then runs
`train.train_and_evaluate` on the same synthetic global batches as the in-process reference
(`test_checkpointing.SyntheticData`, each process feeding its half), checkpointing at the end.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_STEPS = 2


def _config():
  import test_checkpointing  # The synthetic data and tiny config shared with that test.
  config = test_checkpointing.tiny_config()
  config.train.num_train_steps = NUM_STEPS
  return config


def _losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {row["step"]: row["train/loss"] for row in map(json.loads, f)}


def test_two_processes_equal_one_process(tmp_path):
  import test_checkpointing
  reference = tmp_path / "one_process"
  test_checkpointing.run(reference, config=_config())

  workdir = tmp_path / "two_processes"
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
  workers = [subprocess.Popen([sys.executable, __file__, str(port), str(i), str(workdir)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
  outputs = [w.communicate(timeout=900)[0] for w in workers]
  failed = [f"worker {i} (exit {w.returncode}):\n{out[-3000:]}"
            for i, (w, out) in enumerate(zip(workers, outputs)) if w.returncode]
  assert not failed, "\n".join(failed)

  got, want = _losses(workdir), _losses(reference)
  assert sorted(got) == sorted(want) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-5)
  data_dir = workdir / "checkpoints" / str(NUM_STEPS) / "data"
  assert sorted(p.name for p in data_dir.glob("*.json")) == ["process_0-of-2.json",
                                                            "process_1-of-2.json"]


def _worker(port: int, process_id: int, workdir: str) -> None:
  xla_env.join_cpu_job(port, process_id, str(ROOT / ".jax_cache"))
  import jax
  import test_checkpointing
  assert jax.device_count() == 4 and jax.process_count() == 2
  test_checkpointing.run(workdir, config=_config())


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

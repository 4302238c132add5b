"""Score files: video ids gathered over processes in process order, as the eval arrays are."""

import json
import os
import pathlib
import subprocess
import sys

import portpicker

from fstfl_jax.evaluation import scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Per process: ids of different lengths, non-ASCII, and an empty padding id.
LOCAL_IDS = [["a", "video/ß_01.mp4", ""], ["längeres_video_id_0042", "b", "c"]]


def test_allgather_strings_single_process():
  assert scores.allgather_strings(LOCAL_IDS[1]) == LOCAL_IDS[1]
  assert scores.allgather_strings([]) == []


def test_allgather_strings_two_processes():
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  workers = [subprocess.Popen([sys.executable, __file__, str(port), str(i)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  outputs = [w.communicate(timeout=300) for w in workers]
  assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
  for out, _ in outputs:  # Every process gets everyone's ids, process 0's first.
    assert json.loads(out.strip().splitlines()[-1]) == LOCAL_IDS[0] + LOCAL_IDS[1]


def _worker(port: int, process_id: int) -> None:
  import jax
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                             heartbeat_timeout_seconds=10)
  print(json.dumps(scores.allgather_strings(LOCAL_IDS[process_id])), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]))

"""Two processes train from a gs:// data dir, and from per-host copies, each touching its block.

Each worker is this file run as a script on 127.0.0.1 (`jax.distributed`, 2 CPU devices each),
talking to the GCS server through its own recording proxy, so the test can tell which objects
each process fetched. Mode `bucket` trains with `--config.input.data_dir=gs://...`; mode `copy`
first copies this host's part (`copy_data --process_index`) and trains from local disk. Both
runs must log the same losses (same data, same process count), their evaluation must equal one
process's, and neither process may fetch a shard of the other's block.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker
import pytest

import gcs_emulator
import xla_env
from benchmarks import gcs_proxy
import test_pod_data
from data_pipelines import copy_data
from data_pipelines.records import reading
from data_pipelines.records import schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 2


def _config(data_dir: str):
  import test_checkpointing  # pylint: disable=g-import-not-at-top
  config = test_checkpointing.tiny_config("gsf")
  config.model.num_classes = len(test_pod_data.CLASSES)
  config.input.update(data_dir=data_dir, eval_batch_size=4, resize_short=48, num_threads=2)
  config.train.update(num_train_examples=0, num_train_steps=STEPS)
  config.checkpoint.update(every_steps=0, async_save=False)
  config.evals = dict(val_1x1=dict(clips=1, crops=1))
  return config


def _losses(workdir: pathlib.Path) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["train/loss"] for r in rows if "train/loss" in r]


def _block_shards(data_dir: str, process_index: int) -> set[str]:
  names = set()
  for split in ("train", "validation"):
    paths = reading.split_shards(data_dir, split)
    counts = [len(ix["video_id"]) for ix in reading.read_indices(paths)]
    block = reading.process_blocks(counts, 2)[process_index]
    names |= {os.path.basename(paths[s]) for s in block.shards}
  return names


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
  return test_pod_data.write_data(str(tmp_path_factory.mktemp("data")))


def _train(mode: str, remote: str, tmp_path: pathlib.Path) -> tuple[pathlib.Path, list]:
  """Runs the two workers of `mode`; returns the workdir and each process's proxy."""
  proxies = [gcs_proxy.Proxy(os.environ["STORAGE_EMULATOR_HOST"]) for _ in range(2)]
  workdir = tmp_path / mode
  port = portpicker.pick_unused_port()
  workers = []
  for i, proxy in enumerate(proxies):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(gcs_emulator.client_env(proxy.url), JAX_PLATFORMS="cpu",
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    workers.append(subprocess.Popen(
      [sys.executable, __file__, str(port), str(i), mode, remote, str(workdir),
       str(tmp_path / f"{mode}_host{i}")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True))
  try:
    outputs = [w.communicate(timeout=900)[0] for w in workers]
  finally:
    for worker in workers:  # One failed worker leaves the other waiting in a collective.
      worker.kill()
    for proxy in proxies:
      proxy.close()
  failed = [f"worker {i} (exit {w.returncode}):\n{out[-3000:]}"
            for i, (w, out) in enumerate(zip(workers, outputs)) if w.returncode]
  assert not failed, "\n".join(failed)
  return workdir, proxies


def test_two_hosts_train_from_the_bucket_and_from_their_copies(local_data, gcs, tmp_path):
  remote = f"{gcs}/pod/data"
  copy_data.copy_data_dir(local_data, remote)
  shard_bytes = {n: os.path.getsize(os.path.join(local_data, n)) for n in os.listdir(local_data)
                 if schema.parse_shard_name(n)}
  runs = {mode: _train(mode, remote, tmp_path) for mode in ("bucket", "copy")}

  for mode, (_, proxies) in runs.items():
    for i, proxy in enumerate(proxies):
      fetched = proxy.fetched(lambda n: schema.parse_shard_name(n.rsplit("/", 1)[-1]) is not None)
      shards = {n.rsplit("/", 1)[-1] for n in fetched}
      # Its own shards, every one of them, and nothing of the other host's block.
      assert shards == _block_shards(local_data, i), (mode, i, shards)
      assert sum(fetched.values()) <= sum(shard_bytes.values()) / 2 + max(shard_bytes.values())

  losses = {mode: _losses(workdir) for mode, (workdir, _) in runs.items()}
  assert len(losses["bucket"]) == STEPS and losses["bucket"] == losses["copy"]

  # The 2-process evaluation of the bucket run equals one process evaluating its checkpoint.
  from fstfl_jax.apps import experiment  # pylint: disable=g-import-not-at-top
  from fstfl_jax.training import sharding  # pylint: disable=g-import-not-at-top
  workdir = runs["bucket"][0]
  two = json.loads((workdir / f"eval_val_1x1_step{STEPS}.json").read_text())
  one = experiment.evaluate_checkpoint(_config(local_data), str(workdir), protocol="val_1x1",
                                       mesh=sharding.make_mesh(4))["val_1x1"]
  assert two["num_videos"] == one["num_videos"] == test_pod_data.NUM_VAL
  assert two["top1"] == one["top1"] and two["confusion"] == one["confusion"].tolist()
  np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def _worker(port: int, process_id: int, mode: str, remote: str, workdir: str,
            host_dir: str) -> None:
  xla_env.join_cpu_job(port, process_id, str(ROOT / ".jax_cache"))
  from fstfl_jax.apps import experiment  # pylint: disable=g-import-not-at-top
  data_dir = remote
  if mode == "copy":
    copy_data.copy_data_dir(remote, host_dir, process_index=process_id, process_count=2)
    data_dir = host_dir
  config = _config(data_dir)
  experiment.train_and_evaluate(config, workdir, with_eval=False)
  experiment.evaluate_checkpoint(config, workdir, protocol="val_1x1")


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])

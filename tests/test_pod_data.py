"""Data at pod scale: per-process blocks, one host's copy, reads straight from a bucket.

Against the GCS server on 127.0.0.1 (`gcs` fixture), with a recording proxy in front of it
(`gcs_proxy`) where a test asserts what a client fetched.
"""

import logging
import os
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from array_record.python import array_record_module

import build_fixtures
import gcs_emulator
from benchmarks import gcs_proxy
import test_pipeline
from configs import common
from data_pipelines import build
from data_pipelines import copy_data
from data_pipelines import gcs as gcs_lib
from data_pipelines import reshard
from data_pipelines import storage
from data_pipelines.records import offsets
from data_pipelines.records import reading
from data_pipelines.records import schema
from data_pipelines.records import writing
from fstfl_jax.apps import consistency

TRAIN_SHARDS, VAL_SHARDS = 4, 2
NUM_TRAIN, NUM_VAL = 16, 6
CLASSES = [f"class {k}" for k in range(4)]


def write_data(path: str, *, settings: dict | None = None, sorted_labels: bool = False) -> str:
  """A data dir of synthetic clips (pixels name video and frame, `test_pipeline`).

  Labels are 4 classes; `sorted_labels` writes the train split class by class, as an annotation
  file would list it, and leaves the train order out of the settings (a data dir built before
  train splits were shuffled).
  """
  def video(v: int, label: int) -> dict:
    return dict(test_pipeline.make_record(v, num_frames=6), label=label)

  labels = np.arange(NUM_TRAIN) % 4
  train = [video(v, int(c)) for v, c in enumerate(np.sort(labels) if sorted_labels else labels)]
  val = [video(NUM_TRAIN + v, v % 4) for v in range(NUM_VAL)]
  writing.write_split(path, "train", train, TRAIN_SHARDS)
  writing.write_split(path, "validation", val, VAL_SHARDS)
  extra = {} if sorted_labels else {schema.TRAIN_ORDER: dict(shuffle_seed=0)}
  writing.write_metadata(path, CLASSES, ["train", "validation"],
                         dict(settings or {}, source="test", **extra))
  return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_data(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def proxy(gcs, monkeypatch):
  """A recording proxy; this process's clients talk to the bucket through it."""
  del gcs
  server = gcs_proxy.Proxy(os.environ["STORAGE_EMULATOR_HOST"])
  for key, value in gcs_emulator.client_env(server.url).items():
    monkeypatch.setenv(key, value)
  fsspec.filesystem("gs").clear_instance_cache()  # gcsfs reads the endpoint when created.
  yield server
  fsspec.filesystem("gs").clear_instance_cache()
  server.close()


def test_offsets_find_every_record_and_bounded_reads_return_it(tmp_path):
  """Records of random sizes, many across Riegeli's 64 KiB block boundaries."""
  rng = np.random.default_rng(0)
  path = str(tmp_path / "shard")
  records = [rng.bytes(int(n)) for n in rng.integers(1, 150_000, 60)]
  writer = array_record_module.ArrayRecordWriter(path, writing.WRITER_OPTIONS)
  for record in records:
    writer.write(record)
  writer.close()
  table = offsets.locate(path)
  assert table.shape == (60, 2) and (table[:, 1] == [len(r) for r in records]).all()
  spans = [offsets.physical_span(*row) for row in table]
  assert sum(b // offsets.BLOCK_SIZE > a // offsets.BLOCK_SIZE for a, b in spans) > 20
  got = [offsets.strip_headers(d, a) for d, (a, _) in zip(storage.read_ranges(path, spans), spans)]
  assert got == records


def test_blocks_are_contiguous_shard_aligned_and_cover_the_split():
  counts = [5, 4, 6, 5, 5, 4, 6, 5, 5, 4]  # 10 shards, 49 videos.
  for processes in (1, 2, 3, 4, 10):
    blocks = reading.process_blocks(counts, processes)
    assert [v for b in blocks for v in b.videos] == list(range(49))  # In order, each once.
    assert [s for b in blocks for s in b.shards] == list(range(10))
    assert max(len(b.shards) for b in blocks) <= -(-10 // processes)  # <= 1/P + one shard.
  few = reading.process_blocks([3, 3], 4)  # Fewer shards than processes: cut by videos.
  assert [list(b.videos) for b in few] == [[0], [1, 2], [3], [4, 5]]
  assert [list(b.shards) for b in few] == [[0], [0], [1], [1]]


def test_one_hosts_copy_opens_its_block_and_names_what_is_missing(data_dir, tmp_path):
  part = str(tmp_path / "part")
  copy_data.copy_data_dir(data_dir, part, process_index=1, process_count=2)
  names = set(os.listdir(part))
  shards = {n for n in names if schema.parse_shard_name(n)}
  assert shards == {schema.shard_name("train", s, 4) for s in (2, 3)} | {
    schema.shard_name("validation", 1, 2)}
  assert {schema.index_path(schema.shard_name("train", s, 4)) for s in range(4)} <= names
  source = reading.open_split(part, "train", process_index=1, process_count=2)
  assert source.block == range(8, 16)
  want = reading.open_split(data_dir, "train")
  for i in source.block:
    assert source[i]["frames"].take([0, 5]) == want[i]["frames"].take([0, 5])
  with pytest.raises(ValueError) as err:
    reading.open_split(part, "train", process_index=0, process_count=2)
  message = str(err.value)
  assert "process 0 of 2 needs 2 shard(s), of which 2 are missing" in message
  assert "train.array_record-00000-of-00004" in message
  assert "--process_index 0 --process_count 2" in message


def test_bucket_reads_fetch_one_bounded_range_per_frame(data_dir, gcs, proxy):
  remote = f"{gcs}/bounded/data"
  copy_data.copy_data_dir(data_dir, remote)
  proxy.requests.clear()
  local = reading.open_split(data_dir, "validation")
  source = reading.open_split(remote, "validation", process_index=1, process_count=2)
  assert source.block == range(3, 6)
  opened = len(proxy.requests)
  frames = [source[v]["frames"].take([1, 3, 4]) for v in source.block]
  assert frames == [local[v]["frames"].take([1, 3, 4]) for v in source.block]
  reads = [r for r in proxy.requests[opened:] if r[1].endswith(schema.shard_name(
    "validation", 1, 2))]
  assert len(reads) == 9  # One GET per frame, nothing else from the shard.
  for _, _, byte_range, size in reads:
    start, end = map(int, byte_range.removeprefix("bytes=").split("-"))
    assert size == end - start + 1 < 20_000  # A bounded range: one frame record.
  # Process 1 reads none of process 0's shard.
  assert not proxy.fetched(lambda n: n.endswith(schema.shard_name("validation", 0, 2)))


def test_one_hosts_copy_from_a_bucket_fetches_its_share(data_dir, gcs, proxy, tmp_path):
  remote = f"{gcs}/share/data"
  copy_data.copy_data_dir(data_dir, remote)
  proxy.requests.clear()
  copy_data.copy_data_dir(remote, str(tmp_path / "host1"), process_index=1, process_count=2)
  shard_bytes = {n: os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)
                 if schema.parse_shard_name(n)}
  fetched = proxy.fetched(lambda n: schema.parse_shard_name(n.rsplit("/", 1)[-1]) is not None)
  for split in ("train", "validation"):
    total = sum(size for n, size in shard_bytes.items() if n.startswith(split))
    largest = max(size for n, size in shard_bytes.items() if n.startswith(split))
    got = sum(size for n, size in fetched.items() if n.rsplit("/", 1)[-1].startswith(split))
    assert 0 < got <= total / 2 + largest, (split, got, total)


def test_misconfigured_endpoints_and_credentials_fail_in_one_line(gcs, monkeypatch):
  monkeypatch.delenv("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  monkeypatch.setattr(gcs_lib, "_CHECKED", set())
  with pytest.raises(storage.StorageError, match="set CLOUD_STORAGE_EMULATOR_ENDPOINT to http"):
    reading.read_info(f"{gcs}/x")
  for name in gcs_lib.EMULATOR_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/no/such/key.json")
  with pytest.raises(storage.StorageError, match="GOOGLE_APPLICATION_CREDENTIALS") as err:
    reading.read_info(f"{gcs}/x")
  assert "\n" not in str(err.value)


def test_a_wrong_endpoint_stops_a_run_within_seconds(tmp_path):
  closed = "http://127.0.0.1:9"  # Nothing listens on the discard port.
  env = dict(os.environ, **gcs_emulator.client_env(closed), JAX_PLATFORMS="cpu")
  started = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "fstfl_jax.main", "--config", "configs/demo.py",
                         "--config.input.data_dir=gs://bucket/data", "--workdir",
                         str(tmp_path / "wd")], env=env, capture_output=True, text=True,
                        timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert time.monotonic() - started < 30
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert lines[-1].startswith("fstfl-train: error: gs://bucket/data: cannot reach Cloud Storage "
                              f"at {closed}")


def test_class_skewed_blocks_are_named_with_the_fix(tmp_path, caplog):
  old = write_data(str(tmp_path / "old"), sorted_labels=True)
  config = common.model_config("tsn", len(CLASSES), 4)
  full = dict(model=config, input=common.input_config("x", 4),
              train=dict(num_train_examples=0), evals={})
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(full)
  cfg.input.update(data_dir=old, crop_size=32)
  with caplog.at_level(logging.WARNING):
    consistency.check(cfg, train=True, process_count=2)
  assert "fstfl-reshard --src" in caplog.text and "out of proportion" in caplog.text
  cfg.model.bn_group_size = 2
  with pytest.raises(consistency.ConsistencyError, match="bn_group_size=2"):
    consistency.check(cfg, train=True, process_count=2)
  fixed = str(tmp_path / "fixed")
  reshard.reshard(old, fixed)
  caplog.clear()
  cfg.input.data_dir = fixed
  with caplog.at_level(logging.WARNING):
    consistency.check(cfg, train=True, process_count=2)
  assert "out of proportion" not in caplog.text
  source = reading.open_split(fixed, "train")
  assert all(os.path.exists(schema.offsets_path(p)) for p in source.paths)
  labels = source.index["label"]
  assert sorted(labels) == sorted(reading.open_split(old, "train").index["label"])
  assert not (np.diff(labels) >= 0).all()  # No longer class by class.


def test_tpu_host_comes_from_the_tpu_environment(monkeypatch):
  monkeypatch.setenv("TPU_WORKER_ID", "3")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1,h2,h3")
  assert copy_data.tpu_host() == (3, 4)
  monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")
  monkeypatch.setenv("MEGASCALE_SLICE_ID", "1")
  assert copy_data.tpu_host() == (7, 8)
  for name in ("TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name)
  assert copy_data.tpu_host() is None  # The tests' metadata host answers nothing.


def test_build_from_a_bucket_to_a_bucket_equals_the_local_build(gcs, tmp_path):
  src = build_fixtures.make_sources(str(tmp_path / "src"))
  local = str(tmp_path / "local")
  build.build("folder", src, local, workers=0, num_shards=2)
  remote_src = build_fixtures.upload_tree(src, f"{gcs}/build/src")
  remote = f"{gcs}/build/out"
  assert build.main(["--dataset", "folder", "--src", remote_src, "--out", remote,
                     "--num_shards", "2", "--workers", "1"]) == 0
  build_fixtures.assert_same_build(local, remote)
  train = reading.open_split(remote, "train")
  assert train.index["video_id"].tolist() == reading.open_split(local, "train").index[
    "video_id"].tolist()
  assert "frames9" in " ".join(train.index["video_id"])  # The frame folder came from the bucket.

"""Beam build (DirectRunner) against the local builder: same bytes in every file, reruns no-op;
and from a bucket to a bucket on worker processes, as a Dataflow job runs it."""

import os

import pytest

import build_fixtures
from data_pipelines import beam_build
from data_pipelines import build
from data_pipelines.records import schema


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  return build_fixtures.make_sources(str(tmp_path_factory.mktemp("src")))


def tree(root: str) -> dict[str, bytes]:
  """Every file under `root` (relative path -> bytes)."""
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def shard_mtimes(root: str) -> dict[str, int]:
  return {n: os.stat(os.path.join(root, n)).st_mtime_ns for n in os.listdir(root)
          if schema.parse_shard_name(n)}


def test_beam_build_equals_local_build_and_reruns_are_idempotent(src, tmp_path):
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  want = build.build("folder", src, local, workers=0, num_shards=2)
  got = beam_build.build_beam("folder", src, beam, num_shards=2,
                              beam_args=["--runner", "DirectRunner"])
  assert (got.split_sizes, got.failures) == (want.split_sizes, want.failures)
  assert got.split_sizes == {"train": 6, "validation": 2}  # 5 files + 1 folder decoded.
  assert [f["video_id"] for f in got.failures] == ["c0/broken"]
  files = tree(beam)
  assert files == tree(local)  # Shards, video indices, metadata, failures.jsonl, build plan.
  assert {"failures.jsonl", "build_settings.json", "dataset_info.json",
          schema.shard_name("train", 1, 2) + schema.INDEX_SUFFIX} <= set(files)
  # A rerun writes no shard and leaves every byte as it was.
  before = shard_mtimes(beam)
  again = beam_build.build_beam("folder", src, beam, num_shards=2)
  assert again.shards_written == 0 and tree(beam) == files and shard_mtimes(beam) == before
  # A lost shard is rewritten identically; the others are kept.
  lost = schema.shard_name("train", 0, 2)
  os.remove(os.path.join(beam, lost))
  assert beam_build.main(["--dataset", "folder", "--src", src, "--out", beam, "--num_shards",
                          "2", "--", "--runner", "DirectRunner"]) == 0
  assert tree(beam) == files
  assert {n: t for n, t in shard_mtimes(beam).items() if n != lost} == {
    n: t for n, t in before.items() if n != lost}


def test_other_settings_are_refused_like_the_local_build(src, tmp_path):
  out = str(tmp_path / "out")
  build.build("folder", src, out, workers=0, num_shards=2)
  with pytest.raises(ValueError, match=r"holds a build with different \['jpeg_quality'\]"):
    beam_build.build_beam("folder", src, out, quality=80, num_shards=2)


def test_beam_build_from_a_bucket_to_a_bucket_on_worker_processes(src, gcs, tmp_path):
  local = str(tmp_path / "local")
  build.build("folder", src, local, workers=0, num_shards=2)
  remote_src = build_fixtures.upload_tree(src, f"{gcs}/beam/src")
  remote = f"{gcs}/beam/out"
  got = beam_build.build_beam("folder", remote_src, remote, num_shards=2, beam_args=[
    "--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode",
    "multi_processing"])
  assert got.split_sizes == {"train": 6, "validation": 2} and got.shards_written == 4
  build_fixtures.assert_same_build(local, remote)

"""Beam build (DirectRunner) against the local builder: same bytes in every file, reruns no-op."""

import os

import pytest
import simplejpeg

from data_pipelines import beam_build
from data_pipelines import build
from data_pipelines.records import schema
import video_fixtures


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("src"))
  for split, count in (("train", 5), ("validation", 2)):
    for k in range(count):
      video_fixtures.write_video(f"{root}/{split}/c{k % 2}/v{k}.mp4", num_frames=3 + k, height=32,
                                 width=40, seed=k)
  folder = f"{root}/train/c1/frames9"  # A frame-folder video beside the files.
  os.makedirs(folder)
  for t, frame in enumerate(video_fixtures.clip(4, 24, 32, seed=9)):
    with open(f"{folder}/{t:05d}.jpg", "wb") as f:
      f.write(simplejpeg.encode_jpeg(frame, 90))
  with open(f"{root}/train/c0/broken.mp4", "wb") as f:
    f.write(b"not a video at all")
  return root


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
                          "2", "--", "--runner", "DirectRunner"]) is None
  assert tree(beam) == files
  assert {n: t for n, t in shard_mtimes(beam).items() if n != lost} == {
    n: t for n, t in before.items() if n != lost}


def test_other_settings_are_refused_like_the_local_build(src, tmp_path):
  out = str(tmp_path / "out")
  build.build("folder", src, out, workers=0, num_shards=2)
  with pytest.raises(ValueError, match=r"holds a build with different \['jpeg_quality'\]"):
    beam_build.build_beam("folder", src, out, quality=80, num_shards=2)

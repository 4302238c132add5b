"""Source trees and build comparisons shared by the bucket build tests (tests/ and tests_beam/).

Imports only `data_pipelines`, so the Beam venv (no JAX) can use it too.
"""

import json
import os

import simplejpeg

import video_fixtures
from data_pipelines import storage
from data_pipelines.records import reading
from data_pipelines.records import schema


def make_sources(root: str) -> str:
  """A `folder` layout of tiny videos, a frame folder and a broken file (also used by Beam)."""
  for split, count in (("train", 5), ("validation", 2)):
    for k in range(count):
      video_fixtures.write_video(f"{root}/{split}/c{k % 2}/v{k}.mp4", num_frames=3 + k,
                                 height=32, width=40, seed=k)
  folder = f"{root}/train/c1/frames9"  # A frame-folder video beside the files.
  os.makedirs(folder)
  for t, frame in enumerate(video_fixtures.clip(4, 24, 32, seed=9)):
    with open(f"{folder}/{t:05d}.jpg", "wb") as f:
      f.write(simplejpeg.encode_jpeg(frame, 90))
  with open(f"{root}/train/c0/broken.mp4", "wb") as f:
    f.write(b"not a video at all")
  return root


def upload_tree(root: str, url: str) -> str:
  for path in storage.walk_files(root):
    storage.copy_file(path, f"{url}/{os.path.relpath(path, root)}")
  return url


def assert_same_build(local: str, remote: str) -> None:
  """Every shard, index and offsets file byte for byte; the metadata up to the source path."""
  names = {n for n in os.listdir(local) if schema.parse_shard_name(
    n.removesuffix(schema.INDEX_SUFFIX).removesuffix(schema.OFFSETS_SUFFIX))}
  assert names and set(storage.listdir(remote)) >= names
  for name in sorted(names):
    assert storage.read_bytes(f"{remote}/{name}") == storage.read_bytes(f"{local}/{name}"), name
  want, got = (reading.read_info(d).settings for d in (local, remote))
  assert {k: v for k, v in got.items() if k != "source_layout"} == {
    k: v for k, v in want.items() if k != "source_layout"}
  failures = [[(f["video_id"], f["reason"].replace(f["source"], "SOURCE")) for f in map(
    json.loads, storage.read_text(f"{d}/failures.jsonl").splitlines())] for d in (local, remote)]
  assert failures[0] == failures[1] and [f[0] for f in failures[0]] == ["c0/broken"]
  assert "SOURCE" in failures[0][0][1]  # The reason names the source file, wherever it is.

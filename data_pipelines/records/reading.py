"""Reading shards: the data dir's metadata, shard lists and indices, random access to videos.

A read of a clip touches only the records of its sampled frames: `SplitSource[i]` returns the
video's fields from the shard indices and a lazy `VideoFrames`, whose `frames[t]` reads one
frame record, checked against the index. Each shard has its own reader per thread, so a damaged
shard fails only its own reads, with the file and record in the message.
"""

import bisect
import dataclasses
import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from array_record.python import array_record_module
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import storage
from data_pipelines.records import schema

# One record at a time, no read-ahead (reads are random) and no reader thread pool.
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"


def read_index(shard_path: str) -> dict[str, list]:
  """The video index of a shard: columns `schema.INDEX_COLUMNS`, one entry per video in write order.

  Raises:
    ValueError: the index is missing, unreadable, or its columns disagree in length.
  """
  path = schema.index_path(shard_path)
  try:
    with open(path) as f:
      index = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read the shard's video index ({e}); delete "
                     f"{os.path.basename(shard_path)} and rerun the build to rewrite both.") from e
  lengths = {len(index.get(column, ())) for column in schema.INDEX_COLUMNS}
  if len(lengths) != 1:
    raise ValueError(f"{path}: columns {list(schema.INDEX_COLUMNS)} must have equal lengths; "
                     f"delete {os.path.basename(shard_path)} and rerun the build to rewrite both.")
  return index


def require_local(data_dir: str) -> None:
  """ArrayRecord reads local files only: a `gs://` data dir is one error that names the fix."""
  if storage.is_remote(data_dir):
    raise storage.StorageError(
      f"input.data_dir={data_dir}: the shards must be on local disk (ArrayRecord cannot read "
      f"{storage.scheme(data_dir)}://). Copy them to every host with `fstfl-copy-data "
      f"--src {data_dir} --dst /local/dir` (or mount the bucket with gcsfuse) and pass "
      "--config.input.data_dir=/local/dir.")


def shard_paths(data_dir: str, split: str) -> list[str]:
  """The complete, ordered shard list of a split.

  Raises:
    StorageError: `data_dir` is not on a local file system.
    ValueError: no shards, or a shard of `-of-N` missing / two different N present.
  """
  require_local(data_dir)
  found = {}
  for name in os.listdir(data_dir):
    shard = schema.parse_shard_name(name)
    if shard and shard[0] == split:
      found.setdefault(shard[2], set()).add(shard[1])
  if not found:
    raise ValueError(f"{data_dir}: no shards for split {split!r} (expected files named "
                     f"{schema.shard_name(split, 0, 1)!r}-style).")
  if len(found) > 1:
    raise ValueError(f"{data_dir}: split {split!r} has shards of different sets "
                     f"(-of-{sorted(found)}); remove the stale ones.")
  (num, shards), = found.items()
  missing = sorted(set(range(num)) - shards)
  if missing:
    raise ValueError(f"{data_dir}: split {split!r} is incomplete, missing "
                     f"{[schema.shard_name(split, s, num) for s in missing[:3]]} (rerun the "
                     "build).")
  return [os.path.join(data_dir, schema.shard_name(split, s, num)) for s in range(num)]


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What `read_info` returns; `settings` is the content of `build_settings.json`."""
  data_dir: str
  class_names: list[str]
  split_sizes: dict[str, int]  # Videos per split.
  settings: dict[str, Any]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def read_info(data_dir: str) -> DatasetMeta:
  """Class names and video counts per split, from the build settings (layout checked)."""
  if not storage.path(data_dir).is_dir():
    raise storage.StorageError(f"data dir {data_dir}: no such directory; build it with "
                               f"`fstfl-build --dataset ... --out {data_dir}` or point "
                               "--config.input.data_dir at a built one.")
  settings_path = storage.path(data_dir) / schema.SETTINGS_FILE
  if not settings_path.exists():
    raise storage.StorageError(f"{settings_path}: missing; is {data_dir} a data dir built by "
                               "data_pipelines.build (fstfl-build)?")
  settings = storage.read_json(settings_path)
  schema.check_layout(data_dir, settings)
  return DatasetMeta(data_dir=data_dir, class_names=list(settings["class_names"]),
                     split_sizes=dict(settings["split_sizes"]), settings=settings)


class VideoFrames(Sequence):
  """The JPEG frames of one video, each read from its shard on access (`frames[t]` -> bytes).

  Compares equal to any sequence of the same bytes (`list(frames)` reads them all).
  """

  def __init__(self, source: "SplitSource", video: int):
    self._source = source
    self._video = video
    self._len = int(source.index["num_frames"][video])

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, t: int) -> bytes:
    if not -self._len <= t < self._len:
      raise IndexError(f"frame {t} out of range for {self._len} frames.")
    return self._source.frame(self._video, int(t) % self._len)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Sequence) and list(self) == list(other)

  def __repr__(self) -> str:
    return f"VideoFrames({self._len} frames of video {self._video})"


class SplitSource(Sequence):
  """Random access to the videos of one split: `len()`, `[i]` -> dict (`schema.SCHEMA` keys).

  `frames` is a `VideoFrames`: only the frames a caller indexes are read, one record each.
  Pickles as (paths, index) and reopens the files lazily, one reader per shard and thread, so
  it can be handed to grain reader threads and worker processes.
  """

  def __init__(self, paths: Sequence[str], indices: Sequence[dict[str, list]],
               num_classes: int):
    self.paths = list(paths)
    self.num_classes = num_classes
    self.index = {c: np.concatenate([np.asarray(ix[c]) for ix in indices])
                  for c in schema.INDEX_COLUMNS}
    self.index["video_id"] = self.index["video_id"].astype(str)
    self._ids = [v.encode() for v in self.index["video_id"]]  # As stored in the frame records.
    counts = [len(ix["video_id"]) for ix in indices]
    self._starts = np.cumsum([0, *counts]).tolist()
    # First frame record of every video inside its shard.
    self._first = np.concatenate([np.cumsum([0, *ix["num_frames"][:-1]]) if ix["num_frames"]
                                  else np.zeros(0, np.int64) for ix in indices]).astype(np.int64)
    self._local = threading.local()
    self._check_index()

  def _check_index(self) -> None:
    for column, limit in (("label", self.num_classes), ("num_frames", None)):
      values = self.index[column]
      bad = np.flatnonzero((values < 0) | (values >= limit) if limit else values < 1)
      if bad.size:
        i = int(bad[0])
        shard, video = self._locate(i)
        raise ValueError(f"{schema.index_path(self.paths[shard])} video {video}"
                         f": key {column!r} is {values[i]}, expected "
                         + (f"0..{limit - 1}." if limit else ">= 1."))

  def __len__(self) -> int:
    return self._starts[-1]

  def _locate(self, index: int) -> tuple[int, int]:
    """(shard, video index inside the shard) of split video `index`."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return shard, index - self._starts[shard]

  def _reader(self, shard: int) -> array_record_module.ArrayRecordReader:
    readers = self._local.__dict__.setdefault("readers", {})
    if shard not in readers:
      readers[shard] = array_record_module.ArrayRecordReader(self.paths[shard], _READER_OPTIONS)
    return readers[shard]

  def _read(self, shard: int, record: int) -> bytes:
    """Stored bytes of one record; a damaged shard raises naming the file and record.

    One reader per shard: one damaged shard must not fail reads of the others, and Riegeli's
    error names no file or record.
    """
    try:
      reader = self._reader(shard)
      reader.seek(record)
      return reader.read()
    except Exception as e:  # Riegeli raises bare RuntimeErrors, often without a message.
      self._local.__dict__.get("readers", {}).pop(shard, None)  # Reopen after a failure.
      detail = " ".join(f"{type(e).__name__}: {e}".split()).rstrip(": ")
      raise ValueError(f"{self.paths[shard]} record {record}: cannot read it ({detail}); the "
                       "shard file is damaged: delete it and rerun the build to rewrite it.") from e

  def record_of(self, video: int, t: int) -> tuple[int, int]:
    """(shard, record index in the shard file) of frame `t` of split video `video`."""
    return bisect.bisect_right(self._starts, video) - 1, int(self._first[video]) + t

  def frame(self, video: int, t: int) -> bytes:
    """JPEG bytes of frame `t` of split video `video`, checked against the video index."""
    shard, record = self.record_of(video, t)
    data = self._read(shard, record)
    try:
      feature = tf_example_pb2.Example.FromString(data).features.feature
    except Exception as e:  # protobuf raises its own DecodeError type.
      raise ValueError(f"{self.paths[shard]} record {record}: not a serialized tf.train.Example "
                       f"({e}).") from e
    ids, frames = feature["video_id"].bytes_list.value, feature["frame"].int64_list.value
    jpeg = feature["jpeg"].bytes_list.value
    if not (len(ids) == 1 == len(frames) and ids[0] == self._ids[video] and frames[0] == t):
      raise ValueError(f"{self.paths[shard]} record {record}: holds (video_id, frame) "
                       f"({list(ids)}, {list(frames)}), expected {self._ids[video]!r}, {t} from "
                       f"{os.path.basename(schema.index_path(self.paths[shard]))} video "
                       f"{video - self._starts[shard]}; the shard and its index disagree: delete "
                       "the shard and rerun the build.")
    jpeg = jpeg[0] if len(jpeg) == 1 else None
    if jpeg is None or not (jpeg.startswith(schema.JPEG_SOI) and jpeg.endswith(schema.JPEG_EOI)):
      schema.check_jpeg(jpeg, f"{self.paths[shard]} record {record}: key 'jpeg'")
    return jpeg

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records.")
    index = int(index) % len(self)
    ix = self.index
    return dict(frames=VideoFrames(self, index), label=int(ix["label"][index]),
                video_id=str(ix["video_id"][index]), fps=float(ix["fps"][index]),
                height=int(ix["height"][index]), width=int(ix["width"][index]),
                num_frames=int(ix["num_frames"][index]))

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return (self[i] for i in range(len(self)))

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_local"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _local=threading.local())

  def __repr__(self) -> str:
    return f"SplitSource({len(self)} videos in {len(self.paths)} shards)"


def open_split(data_dir: str, split: str) -> SplitSource:
  """Random-access videos of `split` in `data_dir` (shard order, then write order)."""
  info = read_info(data_dir)
  if split not in info.split_sizes:
    raise ValueError(f"{data_dir}: no split {split!r}; has {sorted(info.split_sizes)}.")
  paths = shard_paths(data_dir, split)
  source = SplitSource(paths, [read_index(p) for p in paths], info.num_classes)
  if len(source) != info.split_sizes[split]:
    raise ValueError(f"{data_dir}: {schema.SETTINGS_FILE} lists {info.split_sizes[split]} "
                     f"videos for {split!r} but the shard indices hold {len(source)}; rerun the "
                     "build to rewrite the metadata.")
  return source

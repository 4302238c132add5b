"""Random access to the videos of one split, from local shards or straight from a bucket.

A read of a clip touches only the records of its sampled frames: `SplitSource[i]` returns the
video's fields from the shard indices and a lazy `VideoFrames`; `frames.take(ts)` reads the
records of frames `ts` in one go, each checked against the index. Where the bytes come from:

  local shard                 `ArrayRecordReader`, one per shard and thread (random access)
  bucket, `<shard>.offsets.npy` present
                              one bounded range GET per frame, the clip's GETs concurrent on
                              pooled connections (`records.offsets`, `storage.read_ranges`)
  bucket, no offsets          array-record's own GCS reader, the clip's records in parallel;
                              it fetches far more than each record (warned once, with the fix)

A damaged shard fails only its own reads, with the file and record in the message.
"""

import bisect
import io
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import storage
from data_pipelines.records import offsets as offsets_lib
from data_pipelines.records import schema

# Local files: one record at a time, no read-ahead (reads are random) and no thread pool.
_LOCAL_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
# A bucket through array-record's reader: no read-ahead, the records of a clip in parallel.
_BUCKET_OPTIONS = "readahead_buffer_size:0,max_parallelism:16"
_WARNED: set[str] = set()


class VideoFrames(Sequence):
  """The JPEG frames of one video, read from its shard on access (`frames[t]` -> bytes).

  `take(ts)` reads several frames with one request batch. Compares equal to any sequence of the
  same bytes (`list(frames)` reads them all).
  """

  def __init__(self, source: "SplitSource", video: int):
    self._source = source
    self._video = video
    self._len = int(source.index["num_frames"][video])

  def __len__(self) -> int:
    return self._len

  def _check(self, t: int) -> int:
    if not -self._len <= t < self._len:
      raise IndexError(f"frame {t} out of range for {self._len} frames.")
    return int(t) % self._len

  def __getitem__(self, t: int) -> bytes:
    return self.take([t])[0]

  def take(self, ts: Sequence[int]) -> list[bytes]:
    """The JPEG bytes of frames `ts` (in that order), read together."""
    return self._source.frames(self._video, [self._check(t) for t in ts])

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Sequence) and list(self) == list(other)

  def __repr__(self) -> str:
    return f"VideoFrames({self._len} frames of video {self._video})"


class SplitSource(Sequence):
  """Random access to the videos of one split: `len()`, `[i]` -> dict (`schema.SCHEMA` keys).

  Indices are the split's, in shard order then write order, whatever part of the split this
  process reads (`block`, from `reading.open_split`). Pickles as (paths, index) and reopens the
  files lazily, so it can be handed to grain reader threads and worker processes.
  """

  def __init__(self, paths: Sequence[str], indices: Sequence[dict[str, list]],
               num_classes: int, *, block: range | None = None,
               offset_files: Sequence[bool] | None = None):
    self.paths = list(paths)
    self.num_classes = num_classes
    self.index = {c: np.concatenate([np.asarray(ix[c]) for ix in indices])
                  for c in schema.INDEX_COLUMNS}
    self.index["video_id"] = self.index["video_id"].astype(str)
    self._ids = [v.encode() for v in self.index["video_id"]]  # As stored in the frame records.
    counts = [len(ix["video_id"]) for ix in indices]
    self._starts = np.cumsum([0, *counts]).tolist()
    self.block = range(len(self)) if block is None else block
    # First frame record of every video inside its shard.
    self._first = np.concatenate([np.cumsum([0, *ix["num_frames"][:-1]]) if ix["num_frames"]
                                  else np.zeros(0, np.int64) for ix in indices]).astype(np.int64)
    self._has_offsets = list(offset_files or [False] * len(self.paths))
    self._offsets: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()
    self._local = threading.local()
    self._check_index()

  def _check_index(self) -> None:
    for column, limit in (("label", self.num_classes), ("num_frames", None)):
      values = self.index[column]
      bad = np.flatnonzero((values < 0) | (values >= limit) if limit else values < 1)
      if bad.size:
        i = int(bad[0])
        shard, video = self.locate(i)
        raise ValueError(f"{schema.index_path(self.paths[shard])} video {video}"
                         f": key {column!r} is {values[i]}, expected "
                         + (f"0..{limit - 1}." if limit else ">= 1."))

  def __len__(self) -> int:
    return self._starts[-1]

  @property
  def videos_per_shard(self) -> list[int]:
    return [b - a for a, b in zip(self._starts, self._starts[1:])]

  def locate(self, index: int) -> tuple[int, int]:
    """(shard, video index inside the shard) of split video `index`."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return shard, index - self._starts[shard]

  # ------------------------------------------------------------------ record bytes, by source.
  def _reader(self, shard: int) -> array_record_module.ArrayRecordReader:
    readers = self._local.__dict__.setdefault("readers", {})
    if shard not in readers:
      path = self.paths[shard]
      if storage.is_remote(path) and path not in _WARNED:
        _WARNED.add(path)
        logging.warning(
          "%s has no %s: reading it through array-record's GCS reader, which transfers much "
          "more than each record. Add the offsets with `fstfl-reshard --src DATA_DIR --out "
          "NEW_DIR` (no decoding) or rebuild the data dir.", path, schema.OFFSETS_SUFFIX)
      readers[shard] = array_record_module.ArrayRecordReader(
        path, _BUCKET_OPTIONS if storage.is_remote(path) else _LOCAL_OPTIONS)
    return readers[shard]

  def _record_offsets(self, shard: int) -> np.ndarray:
    with self._lock:
      if shard not in self._offsets:
        data = storage.read_bytes(schema.offsets_path(self.paths[shard]))
        self._offsets[shard] = np.load(io.BytesIO(data))
      return self._offsets[shard]

  def _read(self, shard: int, records: list[int]) -> list[bytes]:
    """Stored bytes of `records` of one shard; a damaged shard raises naming file and record.

    One reader per shard: one damaged shard must not fail reads of the others, and Riegeli's
    error names no file or record.
    """
    path = self.paths[shard]
    try:
      if self._has_offsets[shard] and storage.is_remote(path):
        table = self._record_offsets(shard)
        spans = [offsets_lib.physical_span(*table[r]) for r in records]
        data = storage.read_ranges(path, spans)
        return [offsets_lib.strip_headers(d, a) for d, (a, _) in zip(data, spans)]
      reader = self._reader(shard)
      if storage.is_remote(path):
        return reader.read(list(records))
      out = []
      for r in records:
        reader.seek(r)
        out.append(reader.read())
      return out
    except Exception as e:  # Riegeli raises bare RuntimeErrors, often without a message.
      self._local.__dict__.get("readers", {}).pop(shard, None)  # Reopen after a failure.
      detail = " ".join(f"{type(e).__name__}: {e}".split()).rstrip(": ")
      raise ValueError(f"{path} record {records[0]}: cannot read it ({detail}); the shard file "
                       "is damaged or missing: delete it and rerun the build (or the copy) to "
                       "rewrite it.") from e

  def record_of(self, video: int, t: int) -> tuple[int, int]:
    """(shard, record index in the shard file) of frame `t` of split video `video`."""
    return bisect.bisect_right(self._starts, video) - 1, int(self._first[video]) + t

  def frames(self, video: int, ts: Sequence[int]) -> list[bytes]:
    """JPEG bytes of frames `ts` of split video `video`, each checked against the index."""
    shard, first = self.record_of(video, 0)
    records = [first + t for t in ts]
    return [self._check_frame(data, shard, record, video, t)
            for data, record, t in zip(self._read(shard, records), records, ts)]

  def _check_frame(self, data: bytes, shard: int, record: int, video: int, t: int) -> bytes:
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

  # ---------------------------------------------------------------------------- videos.
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
    return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_lock", "_offsets")}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _local=threading.local(), _lock=threading.Lock(), _offsets={})

  def __repr__(self) -> str:
    return f"SplitSource({len(self)} videos in {len(self.paths)} shards)"

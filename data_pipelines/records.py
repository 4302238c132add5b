"""Video record schema, sharded ArrayRecord writing, TFDS metadata, validated random-access reads.

Record layout 2: one record per **frame**, a `tf.train.Example` proto in TFDS's own encoding:

  jpeg        Tensor((), object)  the frame's JPEG bytes
  frame       int32               index of the frame in its video (0-based, temporal order)
  video_id    Text                id from the source annotation files
  label       ClassLabel          0-based class index
  fps         float32             source frame rate (0: unknown)
  height      int32               stored frame height (after the short-side cap)
  width       int32               stored frame width
  num_frames  int32               frames of the video

A video's frames are consecutive records of one shard. Each shard has a video index beside it,
`<shard>.videos.json` (columns video_id, label, num_frames, fps, height, width, in write order),
so a read of a clip touches only the records of its sampled frames (layout 1, one record per
video, made every read copy and parse all ~40 frames to use 8). `build_settings.json` carries
`record_layout`; older data dirs fail with one line naming `data_pipelines.convert_layout`.

Frames are opaque bytes, not `tfds.features.Video`/`Image`: those need TensorFlow, or decode every
frame on read; here decoding is left to the input pipeline (simplejpeg).

Layout of a data dir (TFDS naming, so `tfds.builder_from_directory(d).as_data_source(split)`
reads the frame records without TensorFlow):

  <split>.array_record-00000-of-000NN  one ArrayRecord file per shard, `group_size:1`, uncompressed
  <split>.array_record-00000-of-000NN.videos.json  its video index
  dataset_info.json, features.json, label.labels.txt  TFDS metadata (class names, frame counts)
  build_settings.json                  how the shards were made, video counts per split

Why `tfds.folder_dataset.write_metadata` and not a `GeneratorBasedBuilder` with `manual_dir`:
writing speed does not decide (video decoding dominates a build either way).
The builder, however, passes every example through its key-hash shuffler (spilled to disk for large
splits) and decides itself which record lands in which shard, so a killed build restarts from zero.
Writing the shards ourselves keeps generation order (`source[i]` is the i-th written video) and
lets a build resume shard by shard.

Shards are written to `.partial/<name>` and renamed into place when complete (after their video
index), so a file matching the shard pattern is always a finished shard; reruns skip them.
Videos go to shards in contiguous, deterministic blocks (`shard_ranges`), which is what makes
resuming correct. Design notes: docs/data.md.
"""

from collections.abc import Iterable, Iterator, Sequence
import bisect
import dataclasses
import json
import os
import re
import threading
from typing import Any

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.proto import tf_example_pb2

from fstfl_jax import storage

LAYOUT = 2  # `record_layout` in build_settings.json; 1 (absent): one record per video.
FILE_FORMAT = "array_record"
SHARD_TEMPLATE = "{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SETTINGS_FILE = "build_settings.json"
INDEX_SUFFIX = ".videos.json"
PARTIAL_DIR = ".partial"
# Random access needs one record per chunk: larger groups make every random read decompress a
# whole chunk (docs/data.md#shard-files). JPEG bytes do not compress: no compression, so a read
# is a copy.
WRITER_OPTIONS = "group_size:1,uncompressed"
# One record at a time, no read-ahead (reads are random) and no reader thread pool.
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"

# Video-level key -> Python type, as written to shards (and `frames`: a list of JPEG bytes).
SCHEMA = {
  "frames": bytes,
  "label": int,
  "video_id": str,
  "fps": float,
  "height": int,
  "width": int,
  "num_frames": int,
}
INDEX_COLUMNS = ("video_id", "label", "num_frames", "fps", "height", "width")
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class LayoutError(ValueError):
  """A data dir written in another record layout (`LAYOUT`)."""


def features(class_names: Sequence[str] | None = None) -> tfds.features.FeaturesDict:
  """The TFDS features of one frame record; `label` is a ClassLabel when class names are given.

  A ClassLabel and an int64 Scalar serialize identically, so shards can be written before the
  class list is final (the metadata carries the names).
  """
  label = (tfds.features.ClassLabel(names=list(class_names)) if class_names is not None
           else tfds.features.Scalar(dtype=np.int64))
  return tfds.features.FeaturesDict(dict(
    jpeg=tfds.features.Tensor(shape=(), dtype=np.object_),
    frame=tfds.features.Scalar(dtype=np.int32),
    video_id=tfds.features.Text(),
    label=label,
    fps=tfds.features.Scalar(dtype=np.float32),
    height=tfds.features.Scalar(dtype=np.int32),
    width=tfds.features.Scalar(dtype=np.int32),
    num_frames=tfds.features.Scalar(dtype=np.int32),
  ))


def shard_name(split: str, shard: int, num_shards: int) -> str:
  """`train.array_record-00003-of-00016` (TFDS's `SHARD_X_OF_Y` naming)."""
  return f"{split}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


def shard_ranges(num_records: int, num_shards: int) -> list[range]:
  """Contiguous, deterministic video-index blocks per shard; sizes differ by at most one."""
  if num_shards < 1 or num_shards > max(1, num_records):
    raise ValueError(f"num_shards must be in 1..{max(1, num_records)} for {num_records} records, "
                     f"got {num_shards}.")
  bounds = [num_records * s // num_shards for s in range(num_shards + 1)]
  return [range(bounds[s], bounds[s + 1]) for s in range(num_shards)]


def shard_is_done(out_dir: str, split: str, shard: int, num_shards: int) -> bool:
  """A shard file under its final name is complete by construction (atomic rename)."""
  return os.path.exists(os.path.join(out_dir, shard_name(split, shard, num_shards)))


def validate_record(record: dict[str, Any], where: str) -> dict[str, Any]:
  """Checks keys, types and JPEG framing of a video dict (see `SCHEMA`); returns it normalised.

  Raises:
    ValueError: naming `where` (file and video index), the key, and what was expected.
  """
  missing = [k for k in SCHEMA if k not in record]
  if missing:
    raise ValueError(f"{where}: missing key {missing[0]!r}; expected keys {list(SCHEMA)}.")
  out = {}
  for key, kind in SCHEMA.items():
    value = record[key]
    if key == "frames":
      if not isinstance(value, Sequence) or isinstance(value, (bytes, str)) or not value:
        raise ValueError(f"{where}: key 'frames' must be a non-empty list of JPEG bytes, "
                         f"got {type(value).__name__} of length {len(value) if value else 0}.")
      value = list(value)
      for t, frame in enumerate(value):
        check_jpeg(frame, f"{where}: key 'frames'[{t}]")
      out[key] = value
    elif kind is str:
      if isinstance(value, bytes):
        value = value.decode("utf-8")
      if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: key {key!r} must be a non-empty str, got {value!r}.")
      out[key] = value
    elif kind is int:
      if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: key {key!r} must be an int >= 0, got {value!r}.")
      out[key] = int(value)
    else:
      if not isinstance(value, (int, float, np.floating, np.integer)) or not value >= 0:
        raise ValueError(f"{where}: key {key!r} must be a float >= 0, got {value!r}.")
      out[key] = float(value)
  if out["num_frames"] != len(out["frames"]):
    raise ValueError(f"{where}: key 'num_frames' is {out['num_frames']} but 'frames' holds "
                     f"{len(out['frames'])} frames.")
  return out


def check_jpeg(frame: Any, what: str) -> bytes:
  """`frame` if it is framed like a complete JPEG (FFD8 ... FFD9); else ValueError naming `what`."""
  if not isinstance(frame, bytes) or not (frame.startswith(_JPEG_SOI)
                                          and frame.endswith(_JPEG_EOI)):
    raise ValueError(f"{what} is not a complete JPEG image (expected bytes starting with FFD8 "
                     f"and ending with FFD9, got {type(frame).__name__} "
                     f"{bytes(frame[:4]).hex() if frame else ''}...).")
  return frame


def index_path(shard_path: str) -> str:
  return shard_path + INDEX_SUFFIX


def _write_json(path: str, value: Any) -> None:
  """Atomic: a reader sees the old file or the complete new one."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".tmp", path)


class ShardWriter:
  """Writes one shard (and its video index) under temporary names; renames only on a clean exit.

  Usage: `with ShardWriter(out, "train", 3, 16) as w: w.write(video)`. A stale temporary file
  from a killed run is overwritten; an exception inside the block deletes the temporary file.
  The index is renamed into place before the shard, so a finished shard always has its index.
  """

  def __init__(self, out_dir: str, split: str, shard: int, num_shards: int):
    self.path = os.path.join(out_dir, shard_name(split, shard, num_shards))
    self.tmp_path = os.path.join(out_dir, PARTIAL_DIR, os.path.basename(self.path))
    self.count = 0
    self.index = {column: [] for column in INDEX_COLUMNS}
    self._features = features()
    self._writer = None

  def __enter__(self) -> "ShardWriter":
    os.makedirs(os.path.dirname(self.tmp_path), exist_ok=True)
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)
    self._writer = array_record_module.ArrayRecordWriter(self.tmp_path, WRITER_OPTIONS)
    return self

  def write(self, record: dict[str, Any]) -> None:
    """Writes one video dict (`SCHEMA`) as `num_frames` frame records."""
    record = validate_record(record, f"{os.path.basename(self.path)} record {self.count}")
    video = {k: v for k, v in record.items() if k != "frames"}
    for t, jpeg in enumerate(record["frames"]):
      self._writer.write(self._features.serialize_example(dict(video, jpeg=jpeg, frame=t)))
    for column in INDEX_COLUMNS:
      self.index[column].append(record[column])
    self.count += 1

  def __exit__(self, exc_type, exc, tb) -> None:
    self._writer.close()
    if exc_type is None:
      _write_json(index_path(self.path), dict(record_layout=LAYOUT, **self.index))
      os.replace(self.tmp_path, self.path)
    else:
      os.remove(self.tmp_path)
    try:
      os.rmdir(os.path.dirname(self.tmp_path))
    except OSError:  # Another shard is still being written there.
      pass


def write_split(out_dir: str, split: str, records: Iterable[dict[str, Any]],
                num_shards: int) -> list[int]:
  """Writes all videos of a split into `num_shards` shards; returns videos per shard.

  Videos are assigned by `shard_ranges` (contiguous blocks in iteration order). Shards that are
  already complete are skipped. `num_shards` is lowered to the video count (no empty shards).
  """
  records = list(records)
  num_shards = min(num_shards, max(1, len(records)))
  os.makedirs(out_dir, exist_ok=True)
  lengths = []
  for shard, block in enumerate(shard_ranges(len(records), num_shards)):
    path = os.path.join(out_dir, shard_name(split, shard, num_shards))
    if shard_is_done(out_dir, split, shard, num_shards):
      lengths.append(len(read_index(path)["video_id"]))
      continue
    with ShardWriter(out_dir, split, shard, num_shards) as writer:
      for i in block:
        writer.write(records[i])
    lengths.append(writer.count)
  return lengths


def count_records(path: str) -> int:
  """Records (frames) in one shard file."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def read_index(shard_path: str) -> dict[str, list]:
  """The video index of a shard: columns `INDEX_COLUMNS`, one entry per video in write order.

  Raises:
    ValueError: the index is missing, unreadable, or its columns disagree in length.
  """
  path = index_path(shard_path)
  try:
    with open(path) as f:
      index = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read the shard's video index ({e}); delete "
                     f"{os.path.basename(shard_path)} and rerun the build to rewrite both.") from e
  lengths = {len(index.get(column, ())) for column in INDEX_COLUMNS}
  if len(lengths) != 1:
    raise ValueError(f"{path}: columns {list(INDEX_COLUMNS)} must have equal lengths; delete "
                     f"{os.path.basename(shard_path)} and rerun the build to rewrite both.")
  return index


_SHARD_RE = re.compile(r"^(?P<split>.+)\.array_record-(?P<shard>\d{5})-of-(?P<num>\d{5})$")


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
  """'train.array_record-00001-of-00004' -> ('train', 1, 4); other names -> None."""
  m = _SHARD_RE.match(name)
  return (m["split"], int(m["shard"]), int(m["num"])) if m else None


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
    shard = parse_shard_name(name)
    if shard and shard[0] == split:
      found.setdefault(shard[2], set()).add(shard[1])
  if not found:
    raise ValueError(f"{data_dir}: no shards for split {split!r} (expected files named "
                     f"{shard_name(split, 0, 1)!r}-style).")
  if len(found) > 1:
    raise ValueError(f"{data_dir}: split {split!r} has shards of different sets "
                     f"(-of-{sorted(found)}); remove the stale ones.")
  (num, shards), = found.items()
  missing = sorted(set(range(num)) - shards)
  if missing:
    raise ValueError(f"{data_dir}: split {split!r} is incomplete, missing "
                     f"{[shard_name(split, s, num) for s in missing[:3]]} (rerun the build).")
  return [os.path.join(data_dir, shard_name(split, s, num)) for s in range(num)]


def write_metadata(out_dir: str, class_names: Sequence[str], splits: Sequence[str],
                   settings: dict[str, Any], dataset_name: str = "videos") -> dict[str, int]:
  """Writes TFDS metadata and `build_settings.json`; split sizes are counted from the shards.

  TFDS's split sizes and shard lengths count frame records; `build_settings.json` holds the
  video counts (`split_sizes`) and the record layout.

  Returns:
    {split: number of videos}.
  """
  template = naming.ShardedFileTemplate(
    data_dir=out_dir, template=SHARD_TEMPLATE, dataset_name=dataset_name,
    filetype_suffix=FILE_FORMAT)
  split_infos, sizes = [], {}
  for split in splits:
    paths = shard_paths(out_dir, split)
    sizes[split] = sum(len(read_index(p)["video_id"]) for p in paths)
    split_infos.append(splits_lib.SplitInfo(
      name=split, shard_lengths=[count_records(p) for p in paths],
      num_bytes=sum(os.path.getsize(p) for p in paths), filename_template=template))
  settings = dict(settings, class_names=list(class_names), split_sizes=sizes,
                  record_layout=LAYOUT)
  tfds.folder_dataset.write_metadata(
    data_dir=out_dir, features=features(class_names), split_infos=split_infos,
    filename_template=template, version=f"{LAYOUT}.0.0",
    check_data=False,  # The check reads through tf.data, which needs TensorFlow.
    description="Video frames (JPEG, one record per frame; videos listed in <shard>"
                f"{INDEX_SUFFIX}) built by data_pipelines.build. Build settings: "
                + json.dumps({k: v for k, v in settings.items() if k != "class_names"},
                             sort_keys=True))
  with open(os.path.join(out_dir, SETTINGS_FILE), "w") as f:
    json.dump(settings, f, indent=2, sort_keys=True)
  return sizes


def check_layout(data_dir: str, settings: dict[str, Any]) -> None:
  """Raises LayoutError (one line: what was found, how to fix it) unless layout `LAYOUT`."""
  found = settings.get("record_layout", 1)
  if found != LAYOUT:
    raise LayoutError(
      f"{data_dir}: record layout {found} ({'one record per video' if found == 1 else 'unknown'})"
      f", this version reads layout {LAYOUT} (one record per frame); convert it with `python -m "
      f"data_pipelines.convert_layout --src {data_dir} --out NEW_DIR` or rebuild it with "
      "fstfl-build.")


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
  settings_path = storage.path(data_dir) / SETTINGS_FILE
  if not settings_path.exists():
    raise storage.StorageError(f"{settings_path}: missing; is {data_dir} a data dir built by "
                               "data_pipelines.build (fstfl-build)?")
  settings = storage.read_json(settings_path)
  check_layout(data_dir, settings)
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
  """Random access to the videos of one split: `len()`, `[i]` -> dict (`SCHEMA` keys).

  `frames` is a `VideoFrames`: only the frames a caller indexes are read, one record each.
  Pickles as (paths, index) and reopens the files lazily, one reader per shard and thread, so
  it can be handed to grain reader threads and worker processes.
  """

  def __init__(self, paths: Sequence[str], indices: Sequence[dict[str, list]],
               num_classes: int):
    self.paths = list(paths)
    self.num_classes = num_classes
    self.index = {c: np.concatenate([np.asarray(ix[c]) for ix in indices]) for c in INDEX_COLUMNS}
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
        raise ValueError(f"{index_path(self.paths[self._locate(i)[0]])} video {self._locate(i)[1]}"
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
                       f"{os.path.basename(index_path(self.paths[shard]))} video "
                       f"{video - self._starts[shard]}; the shard and its index disagree: delete "
                       "the shard and rerun the build.")
    jpeg = jpeg[0] if len(jpeg) == 1 else None
    if jpeg is None or not (jpeg.startswith(_JPEG_SOI) and jpeg.endswith(_JPEG_EOI)):
      check_jpeg(jpeg, f"{self.paths[shard]} record {record}: key 'jpeg'")
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
    raise ValueError(f"{data_dir}: {SETTINGS_FILE} lists {info.split_sizes[split]} videos for "
                     f"{split!r} but the shard indices hold {len(source)}; rerun the build to "
                     "rewrite the metadata.")
  return source

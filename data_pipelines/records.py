"""Video record schema, sharded ArrayRecord writing, TFDS metadata, validated random-access reads.

One record per video, a `tf.train.Example` proto in TFDS's own encoding:

  frames      Sequence(Tensor((), object))  JPEG bytes, one per frame, in temporal order
  label       ClassLabel                    0-based class index
  video_id    Text                          id from the source annotation files
  fps         float32                       source frame rate (0: unknown)
  height      int32                         stored frame height (after the short-side cap)
  width       int32                         stored frame width
  num_frames  int32                         == len(frames)

Frames are a sequence of opaque bytes, not `tfds.features.Video`/`Image`: those need TensorFlow, or
decode every frame on read; here decoding is left to the input pipeline (simplejpeg).

Layout of a data dir (TFDS naming, so `tfds.builder_from_directory(d).as_data_source(split)` and
`tfds.data_source(...)`-style reading work without TensorFlow):

  <split>.array_record-00000-of-000NN  one ArrayRecord file per shard, `group_size:1` (random reads)
  dataset_info.json, features.json, label.labels.txt  TFDS metadata (class names, split sizes)
  build_settings.json                  how the shards were made (also in the TFDS description)

Why `tfds.folder_dataset.write_metadata` and not a `GeneratorBasedBuilder` with `manual_dir`:
writing speed does not decide (video decoding dominates a build either way).
The builder, however, passes every example through its key-hash shuffler (spilled to disk for large
splits) and decides itself which record lands in which shard, so a killed build restarts from zero.
Writing the shards ourselves keeps generation order (`source[i]` is the i-th written record) and
lets a build resume shard by shard.

Shards are written to `.partial/<name>` and renamed into place when complete, so a file matching the
shard pattern is always a finished shard; reruns skip them. Records go to shards in contiguous,
deterministic blocks (`shard_ranges`), which is what makes resuming correct.

Our reader (`open_split(...)[i]`, validation included) reads the same files faster than
`tfds.builder_from_directory(d).as_data_source(split)`, which goes through TFDS's generic numpy
example parser. Design notes: docs/data.md.
"""

from collections.abc import Iterable, Iterator, Sequence
import bisect
import dataclasses
import json
import os
import re
from typing import Any

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.proto import tf_example_pb2

from fstfl_jax import storage

FILE_FORMAT = "array_record"
SHARD_TEMPLATE = "{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SETTINGS_FILE = "build_settings.json"
PARTIAL_DIR = ".partial"
# Random access needs one record per chunk: larger groups make every random read decompress a
# whole chunk (docs/data.md#shard-files).
WRITER_OPTIONS = "group_size:1"

# key -> (tf.train.Example list kind, Python type of the decoded value). `frames` is a list.
SCHEMA = {
  "frames": ("bytes_list", bytes),
  "label": ("int64_list", int),
  "video_id": ("bytes_list", str),
  "fps": ("float_list", float),
  "height": ("int64_list", int),
  "width": ("int64_list", int),
  "num_frames": ("int64_list", int),
}
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def features(class_names: Sequence[str] | None = None) -> tfds.features.FeaturesDict:
  """The TFDS features of one record; `label` is a ClassLabel when class names are given.

  A ClassLabel and an int64 Scalar serialize identically, so shards can be written before the
  class list is final (the metadata carries the names).
  """
  label = (tfds.features.ClassLabel(names=list(class_names)) if class_names is not None
           else tfds.features.Scalar(dtype=np.int64))
  return tfds.features.FeaturesDict(dict(
    frames=tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
    label=label,
    video_id=tfds.features.Text(),
    fps=tfds.features.Scalar(dtype=np.float32),
    height=tfds.features.Scalar(dtype=np.int32),
    width=tfds.features.Scalar(dtype=np.int32),
    num_frames=tfds.features.Scalar(dtype=np.int32),
  ))


def shard_name(split: str, shard: int, num_shards: int) -> str:
  """`train.array_record-00003-of-00016` (TFDS's `SHARD_X_OF_Y` naming)."""
  return f"{split}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


def shard_ranges(num_records: int, num_shards: int) -> list[range]:
  """Contiguous, deterministic record-index blocks per shard; sizes differ by at most one."""
  if num_shards < 1 or num_shards > max(1, num_records):
    raise ValueError(f"num_shards must be in 1..{max(1, num_records)} for {num_records} records, "
                     f"got {num_shards}.")
  bounds = [num_records * s // num_shards for s in range(num_shards + 1)]
  return [range(bounds[s], bounds[s + 1]) for s in range(num_shards)]


def shard_is_done(out_dir: str, split: str, shard: int, num_shards: int) -> bool:
  """A shard file under its final name is complete by construction (atomic rename)."""
  return os.path.exists(os.path.join(out_dir, shard_name(split, shard, num_shards)))


def _where(path: str, index: int) -> str:
  return f"{os.path.basename(path)} record {index}"


def validate_record(record: dict[str, Any], where: str) -> dict[str, Any]:
  """Checks keys, types and JPEG framing of a decoded record; returns it normalised.

  Raises:
    ValueError: naming `where` (file and record index), the key, and what was expected.
  """
  missing = [k for k in SCHEMA if k not in record]
  if missing:
    raise ValueError(f"{where}: missing key {missing[0]!r}; expected keys {list(SCHEMA)}.")
  out = {}
  for key, (_, kind) in SCHEMA.items():
    value = record[key]
    if key == "frames":
      if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: key 'frames' must be a non-empty list of JPEG bytes, "
                         f"got {type(value).__name__} of length {len(value) if value else 0}.")
      for t, frame in enumerate(value):
        if not isinstance(frame, bytes) or not (frame.startswith(_JPEG_SOI)
                                                and frame.endswith(_JPEG_EOI)):
          raise ValueError(f"{where}: key 'frames'[{t}] is not a complete JPEG image (expected "
                           f"bytes starting with FFD8 and ending with FFD9, got "
                           f"{type(frame).__name__} {bytes(frame[:4]).hex() if frame else ''}"
                           f"...).")
      out[key] = list(value)
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


def decode_record(serialized: bytes, where: str = "record",
                  num_classes: int | None = None) -> dict[str, Any]:
  """Parses one serialized record into a validated dict (see module docstring for keys).

  Args:
    serialized: the bytes stored in an ArrayRecord shard.
    where: shard file and record index, used in error messages.
    num_classes: if given, labels must be below it.

  Raises:
    ValueError: unparseable bytes, a missing key, a wrong type, a truncated JPEG frame or an
      out-of-range label; the message names `where` and the key.
  """
  try:
    feature_map = tf_example_pb2.Example.FromString(serialized).features.feature
  except Exception as e:  # protobuf raises its own DecodeError type.
    raise ValueError(f"{where}: not a serialized tf.train.Example ({e}).") from e
  record = {}
  for key, (list_kind, _) in SCHEMA.items():
    if key not in feature_map:
      raise ValueError(f"{where}: missing key {key!r}; expected keys {list(SCHEMA)}.")
    feature = feature_map[key]
    if feature.WhichOneof("kind") != list_kind:
      raise ValueError(f"{where}: key {key!r} is stored as {feature.WhichOneof('kind')}, "
                       f"expected {list_kind}.")
    values = getattr(feature, list_kind).value
    if key == "frames":
      record[key] = list(values)
    elif len(values) != 1:
      raise ValueError(f"{where}: key {key!r} holds {len(values)} values, expected 1.")
    else:
      record[key] = values[0]
  record = validate_record(record, where)
  if num_classes is not None and record["label"] >= num_classes:
    raise ValueError(f"{where}: key 'label' is {record['label']}, expected < {num_classes}.")
  return record


class ShardWriter:
  """Writes one shard under a temporary name; renames into place only on a clean exit.

  Usage: `with ShardWriter(out, "train", 3, 16) as w: w.write(record)`. A stale temporary file
  from a killed run is overwritten; an exception inside the block deletes the temporary file.
  """

  def __init__(self, out_dir: str, split: str, shard: int, num_shards: int):
    self.path = os.path.join(out_dir, shard_name(split, shard, num_shards))
    self.tmp_path = os.path.join(out_dir, PARTIAL_DIR, os.path.basename(self.path))
    self.count = 0
    self._features = features()
    self._writer = None

  def __enter__(self) -> "ShardWriter":
    os.makedirs(os.path.dirname(self.tmp_path), exist_ok=True)
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)
    self._writer = array_record_module.ArrayRecordWriter(self.tmp_path, WRITER_OPTIONS)
    return self

  def write(self, record: dict[str, Any]) -> None:
    record = validate_record(record, f"{os.path.basename(self.path)} record {self.count}")
    self._writer.write(self._features.serialize_example(record))
    self.count += 1

  def __exit__(self, exc_type, exc, tb) -> None:
    self._writer.close()
    if exc_type is None:
      os.replace(self.tmp_path, self.path)
    else:
      os.remove(self.tmp_path)
    try:
      os.rmdir(os.path.dirname(self.tmp_path))
    except OSError:  # Another shard is still being written there.
      pass


def write_split(out_dir: str, split: str, records: Iterable[dict[str, Any]],
                num_shards: int) -> list[int]:
  """Writes all records of a split into `num_shards` shards; returns records per shard.

  Records are assigned by `shard_ranges` (contiguous blocks in iteration order). Shards that are
  already complete are skipped. `num_shards` is lowered to the record count (no empty shards).
  """
  records = list(records)
  num_shards = min(num_shards, max(1, len(records)))
  os.makedirs(out_dir, exist_ok=True)
  lengths = []
  for shard, block in enumerate(shard_ranges(len(records), num_shards)):
    if shard_is_done(out_dir, split, shard, num_shards):
      lengths.append(count_records(os.path.join(out_dir, shard_name(split, shard, num_shards))))
      continue
    with ShardWriter(out_dir, split, shard, num_shards) as writer:
      for i in block:
        writer.write(records[i])
    lengths.append(writer.count)
  return lengths


def count_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


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

  Returns:
    {split: number of records}.
  """
  template = naming.ShardedFileTemplate(
    data_dir=out_dir, template=SHARD_TEMPLATE, dataset_name=dataset_name,
    filetype_suffix=FILE_FORMAT)
  split_infos, sizes = [], {}
  for split in splits:
    lengths = [count_records(p) for p in shard_paths(out_dir, split)]
    sizes[split] = sum(lengths)
    split_infos.append(splits_lib.SplitInfo(
      name=split, shard_lengths=lengths,
      num_bytes=sum(os.path.getsize(p) for p in shard_paths(out_dir, split)),
      filename_template=template))
  settings = dict(settings, class_names=list(class_names), split_sizes=sizes)
  tfds.folder_dataset.write_metadata(
    data_dir=out_dir, features=features(class_names), split_infos=split_infos,
    filename_template=template, version="1.0.0",
    check_data=False,  # The check reads through tf.data, which needs TensorFlow.
    description="Video records (JPEG frames) built by data_pipelines.build. Build settings: "
                + json.dumps({k: v for k, v in settings.items() if k != "class_names"},
                             sort_keys=True))
  with open(os.path.join(out_dir, SETTINGS_FILE), "w") as f:
    json.dump(settings, f, indent=2, sort_keys=True)
  return sizes


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What `read_info` returns; `settings` is the content of `build_settings.json`."""
  data_dir: str
  class_names: list[str]
  split_sizes: dict[str, int]
  settings: dict[str, Any]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def read_info(data_dir: str) -> DatasetMeta:
  """Class names and split sizes from the TFDS metadata, plus the build settings."""
  if not storage.path(data_dir).is_dir():
    raise storage.StorageError(f"data dir {data_dir}: no such directory; build it with "
                               f"`fstfl-build --dataset ... --out {data_dir}` or point "
                               "--config.input.data_dir at a built one.")
  settings_path = storage.path(data_dir) / SETTINGS_FILE
  if not settings_path.exists():
    raise storage.StorageError(f"{settings_path}: missing; is {data_dir} a data dir built by "
                               "data_pipelines.build (fstfl-build)?")
  info = tfds.builder_from_directory(os.fspath(storage.path(data_dir))).info
  settings = storage.read_json(settings_path)
  return DatasetMeta(
    data_dir=data_dir, class_names=list(info.features["label"].names),
    split_sizes={name: split.num_examples for name, split in info.splits.items()},
    settings=settings)


class SplitSource(Sequence):
  """Random access to one split: `len()`, `[i]` -> validated record dict.

  Pickles as (paths, lengths, num_classes) and reopens the files lazily, so it can be handed to
  grain worker processes (`grain.MapDataset.source(open_split(...))`).
  """

  def __init__(self, paths: Sequence[str], shard_lengths: Sequence[int], num_classes: int):
    self.paths = list(paths)
    self.num_classes = num_classes
    self._starts = np.cumsum([0, *shard_lengths]).tolist()
    self._sources = {}

  def __len__(self) -> int:
    return self._starts[-1]

  def _locate(self, index: int) -> tuple[int, int]:
    """(shard, record index inside the shard) of split record `index`."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return shard, index - self._starts[shard]

  def _where(self, index: int) -> str:
    shard, local = self._locate(index)
    return _where(self.paths[shard], local)

  def _read(self, index: int) -> bytes:
    """The stored bytes of record `index`; a damaged shard raises naming the file and record.

    One reader per shard: ArrayRecord's reader over several files opens all of them, so one
    damaged shard would fail every read, and Riegeli's error names no file or record.
    """
    shard, local = self._locate(index)
    try:
      if shard not in self._sources:
        self._sources[shard] = array_record_data_source.ArrayRecordDataSource(
          [self.paths[shard]])
      return self._sources[shard][local]
    except Exception as e:  # Riegeli raises bare RuntimeErrors, often without a message.
      detail = " ".join(f"{type(e).__name__}: {e}".split()).rstrip(": ")
      raise ValueError(f"{self.paths[shard]} record {local}: cannot read it ({detail}); the "
                       "shard file is damaged: delete it and rerun the build to rewrite it.") from e

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records.")
    index = int(index) % len(self)
    return decode_record(self._read(index), self._where(index), self.num_classes)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return (self[i] for i in range(len(self)))

  def __getstate__(self) -> dict[str, Any]:
    return dict(self.__dict__, _sources={})

  def __repr__(self) -> str:
    return f"SplitSource({len(self)} records in {len(self.paths)} shards)"


def open_split(data_dir: str, split: str) -> SplitSource:
  """Random-access records of `split` in `data_dir` (shard order, then write order)."""
  info = tfds.builder_from_directory(data_dir).info
  if split not in info.splits:
    raise ValueError(f"{data_dir}: no split {split!r}; has {sorted(info.splits)}.")
  paths = shard_paths(data_dir, split)
  lengths = list(info.splits[split].shard_lengths)
  if len(lengths) != len(paths):
    raise ValueError(f"{data_dir}: metadata lists {len(lengths)} shards for {split!r} but "
                     f"{len(paths)} exist; rerun the build to rewrite the metadata.")
  return SplitSource(paths, lengths, len(info.features["label"].names))

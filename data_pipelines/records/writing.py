"""Writing shards: one shard at a time under a temporary name, then the TFDS metadata.

Why `tfds.folder_dataset.write_metadata` and not a `GeneratorBasedBuilder` with `manual_dir`:
writing speed does not decide (video decoding dominates a build either way). The builder,
however, passes every example through its key-hash shuffler (spilled to disk for large splits)
and decides itself which record lands in which shard, so a killed build restarts from zero.
Writing the shards ourselves keeps generation order (`source[i]` is the i-th written video) and
lets a build resume shard by shard.

Shards are written to `.partial/<name>` and renamed into place when complete (after their video
index), so a file matching the shard pattern is always a finished shard; reruns skip them.
Videos go to shards in contiguous, deterministic blocks (`shard_ranges`), which is what makes
resuming correct.
"""

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from array_record.python import array_record_module
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib

from data_pipelines.records import reading
from data_pipelines.records import schema

# Random access needs one record per chunk: larger groups make every random read decompress a
# whole chunk (docs/data.md#shard-files). JPEG bytes do not compress: no compression, so a read
# is a copy.
WRITER_OPTIONS = "group_size:1,uncompressed"


def shard_ranges(num_records: int, num_shards: int) -> list[range]:
  """Contiguous, deterministic video-index blocks per shard; sizes differ by at most one."""
  if num_shards < 1 or num_shards > max(1, num_records):
    raise ValueError(f"num_shards must be in 1..{max(1, num_records)} for {num_records} records, "
                     f"got {num_shards}.")
  bounds = [num_records * s // num_shards for s in range(num_shards + 1)]
  return [range(bounds[s], bounds[s + 1]) for s in range(num_shards)]


def shard_is_done(out_dir: str, split: str, shard: int, num_shards: int) -> bool:
  """A shard file under its final name is complete by construction (atomic rename)."""
  return os.path.exists(os.path.join(out_dir, schema.shard_name(split, shard, num_shards)))


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
    self.path = os.path.join(out_dir, schema.shard_name(split, shard, num_shards))
    self.tmp_path = os.path.join(out_dir, schema.PARTIAL_DIR, os.path.basename(self.path))
    self.count = 0
    self.index = {column: [] for column in schema.INDEX_COLUMNS}
    self._features = schema.features()
    self._writer = None

  def __enter__(self) -> "ShardWriter":
    os.makedirs(os.path.dirname(self.tmp_path), exist_ok=True)
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)
    self._writer = array_record_module.ArrayRecordWriter(self.tmp_path, WRITER_OPTIONS)
    return self

  def write(self, record: dict[str, Any]) -> None:
    """Writes one video dict (`schema.SCHEMA`) as `num_frames` frame records."""
    record = schema.validate_record(record, f"{os.path.basename(self.path)} record {self.count}")
    video = {k: v for k, v in record.items() if k != "frames"}
    for t, jpeg in enumerate(record["frames"]):
      self._writer.write(self._features.serialize_example(dict(video, jpeg=jpeg, frame=t)))
    for column in schema.INDEX_COLUMNS:
      self.index[column].append(record[column])
    self.count += 1

  def __exit__(self, exc_type, exc, tb) -> None:
    self._writer.close()
    if exc_type is None:
      _write_json(schema.index_path(self.path), dict(record_layout=schema.LAYOUT, **self.index))
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
    path = os.path.join(out_dir, schema.shard_name(split, shard, num_shards))
    if shard_is_done(out_dir, split, shard, num_shards):
      lengths.append(len(reading.read_index(path)["video_id"]))
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


def write_metadata(out_dir: str, class_names: Sequence[str], splits: Sequence[str],
                   settings: dict[str, Any], dataset_name: str = "videos") -> dict[str, int]:
  """Writes TFDS metadata and `build_settings.json`; split sizes are counted from the shards.

  TFDS's split sizes and shard lengths count frame records; `build_settings.json` holds the
  video counts (`split_sizes`) and the record layout.

  Returns:
    {split: number of videos}.
  """
  template = naming.ShardedFileTemplate(
    data_dir=out_dir, template=schema.SHARD_TEMPLATE, dataset_name=dataset_name,
    filetype_suffix=schema.FILE_FORMAT)
  split_infos, sizes = [], {}
  for split in splits:
    paths = reading.shard_paths(out_dir, split)
    sizes[split] = sum(len(reading.read_index(p)["video_id"]) for p in paths)
    split_infos.append(splits_lib.SplitInfo(
      name=split, shard_lengths=[count_records(p) for p in paths],
      num_bytes=sum(os.path.getsize(p) for p in paths), filename_template=template))
  settings = dict(settings, class_names=list(class_names), split_sizes=sizes,
                  record_layout=schema.LAYOUT)
  tfds.folder_dataset.write_metadata(
    data_dir=out_dir, features=schema.features(class_names), split_infos=split_infos,
    filename_template=template, version=f"{schema.LAYOUT}.0.0",
    check_data=False,  # The check reads through tf.data, which needs TensorFlow.
    description="Video frames (JPEG, one record per frame; videos listed in <shard>"
                f"{schema.INDEX_SUFFIX}) built by data_pipelines.build. Build settings: "
                + json.dumps({k: v for k, v in settings.items() if k != "class_names"},
                             sort_keys=True))
  with open(os.path.join(out_dir, schema.SETTINGS_FILE), "w") as f:
    json.dump(settings, f, indent=2, sort_keys=True)
  return sizes

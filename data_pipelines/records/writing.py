"""Writing shards: one shard at a time under a temporary name, then the TFDS metadata.

Why `tfds.folder_dataset.write_metadata` and not a `GeneratorBasedBuilder` with `manual_dir`:
writing speed does not decide (video decoding dominates a build either way). The builder,
however, passes every example through its key-hash shuffler (spilled to disk for large splits)
and decides itself which record lands in which shard, so a killed build restarts from zero.
Writing the shards ourselves keeps generation order (`source[i]` is the i-th written video) and
lets a build resume shard by shard.

A shard is written to a local staging file (`.partial/<name>` beside a local data dir, a
temporary directory for a bucket), then its video index and record offsets
(`records.offsets`) are put in place, and the shard itself last: a local rename, or one upload,
which appears complete or not at all. A file matching the shard pattern is therefore always a
finished shard with its index, and reruns skip it. Videos go to shards in contiguous,
deterministic blocks (`shard_ranges`), which is what makes resuming correct.
"""

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import storage
from data_pipelines.records import offsets as offsets_lib
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


def finished_shards(out_dir: str, split: str, num_shards: int) -> set[int]:
  """Shards of `split` (of `num_shards`) complete in `out_dir`: one listing, local or bucket.

  A shard file under its final name is complete by construction (written last, atomically).
  """
  if not storage.path(out_dir).exists():
    return set()
  done = set()
  for name in storage.listdir(out_dir):
    shard = schema.parse_shard_name(name)
    if shard and shard[0] == split and shard[2] == num_shards:
      done.add(shard[1])
  return done


class ShardWriter:
  """Writes one shard, its video index and its record offsets; publishes only on a clean exit.

  Usage: `with ShardWriter(out, "train", 3, 16) as w: w.write(video)`, with `out` a local
  directory or a `gs://` URL. A stale staging file from a killed run is overwritten; an
  exception inside the block deletes the staging file and publishes nothing.
  """

  def __init__(self, out_dir: str, split: str, shard: int, num_shards: int):
    self.path = os.path.join(os.fspath(out_dir), schema.shard_name(split, shard, num_shards))
    self._remote = storage.is_remote(out_dir)
    self.count = 0
    self.index = {column: [] for column in schema.INDEX_COLUMNS}
    self._features = schema.features()
    self._writer = None
    self._staging = None
    self.tmp_path = ""

  def __enter__(self) -> "ShardWriter":
    if self._remote:
      self._staging = tempfile.mkdtemp(prefix="fstfl_shard_")
      self.tmp_path = os.path.join(self._staging, os.path.basename(self.path))
    else:
      self.tmp_path = os.path.join(os.path.dirname(self.path), schema.PARTIAL_DIR,
                                   os.path.basename(self.path))
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
      example = self._features.serialize_example(dict(video, jpeg=jpeg, frame=t))
      # TFDS serialises the feature map in a per-process hash order; sorted keys make a shard
      # the same bytes whichever process (a build worker, a Beam worker) writes it.
      self._writer.write(tf_example_pb2.Example.FromString(example).SerializeToString(
        deterministic=True))
    for column in schema.INDEX_COLUMNS:
      self.index[column].append(record[column])
    self.count += 1

  def _publish(self) -> None:
    """Index, offsets, then the shard: a visible shard always has the other two."""
    index = json.dumps(dict(record_layout=schema.LAYOUT, **self.index)).encode()
    table = offsets_lib.locate(self.tmp_path)
    buffer = io.BytesIO()
    np.save(buffer, table)
    storage.write_bytes(schema.index_path(self.path), index)
    storage.write_bytes(schema.offsets_path(self.path), buffer.getvalue())
    if self._remote:
      storage.copy_file(self.tmp_path, self.path)
    else:
      os.replace(self.tmp_path, self.path)

  def __exit__(self, exc_type, exc, tb) -> None:
    self._writer.close()
    try:
      if exc_type is None:
        self._publish()
    finally:
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)
      elif os.path.exists(self.tmp_path):
        os.remove(self.tmp_path)
      if not self._remote:
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
  storage.path(out_dir).mkdir(parents=True, exist_ok=True)
  done = finished_shards(out_dir, split, num_shards)
  lengths = []
  for shard, block in enumerate(shard_ranges(len(records), num_shards)):
    if shard in done:
      path = os.path.join(os.fspath(out_dir), schema.shard_name(split, shard, num_shards))
      lengths.append(len(reading.read_index(path)["video_id"]))
      continue
    with ShardWriter(out_dir, split, shard, num_shards) as writer:
      for i in block:
        writer.write(records[i])
    lengths.append(writer.count)
  return lengths


def write_metadata(out_dir: str, class_names: Sequence[str], splits: Sequence[str],
                   settings: dict[str, Any], dataset_name: str = "videos") -> dict[str, int]:
  """Writes TFDS metadata and `build_settings.json` (local or bucket); sizes from the indices.

  TFDS's split sizes and shard lengths count frame records (the sum of each index's frame
  counts, which is what the shard holds); `build_settings.json` holds the video counts
  (`split_sizes`) and the record layout. The TFDS files are written to a local directory first
  (where empty files stand for the shards: TFDS reads only their names) and then copied, so
  TFDS never writes to a bucket itself.

  Returns:
    {split: number of videos}.
  """
  out_dir = os.fspath(out_dir)
  names = storage.listdir(out_dir)
  split_infos, sizes = [], {}
  with tempfile.TemporaryDirectory(prefix="fstfl_meta_") as local:
    template = naming.ShardedFileTemplate(
      data_dir=local, template=schema.SHARD_TEMPLATE, dataset_name=dataset_name,
      filetype_suffix=schema.FILE_FORMAT)
    for split in splits:
      paths = reading.split_shards(out_dir, split, names)
      indices = reading.read_indices(paths)
      for p in paths:
        open(os.path.join(local, os.path.basename(p)), "wb").close()
      sizes[split] = sum(len(ix["video_id"]) for ix in indices)
      split_infos.append(splits_lib.SplitInfo(
        name=split, shard_lengths=[int(sum(ix["num_frames"])) for ix in indices],
        num_bytes=sum(storage.size(p) for p in paths), filename_template=template))
    settings = dict(settings, class_names=list(class_names), split_sizes=sizes,
                    record_layout=schema.LAYOUT)
    tfds.folder_dataset.write_metadata(
      data_dir=local, features=schema.features(class_names), split_infos=split_infos,
      filename_template=template, version=f"{schema.LAYOUT}.0.0",
      check_data=False,  # The check reads through tf.data, which needs TensorFlow.
      description="Video frames (JPEG, one record per frame; videos listed in <shard>"
                  f"{schema.INDEX_SUFFIX}) built by data_pipelines.build. Build settings: "
                  + json.dumps({k: v for k, v in settings.items() if k != "class_names"},
                               sort_keys=True))
    for name in sorted(os.listdir(local)):
      if schema.parse_shard_name(name) is None:
        storage.copy_file(os.path.join(local, name), os.path.join(out_dir, name))
  storage.write_text(os.path.join(out_dir, schema.SETTINGS_FILE),
                     json.dumps(settings, indent=2, sort_keys=True))
  return sizes

"""Reading a data dir, local or `gs://`: metadata, shard indices, and each process's block.

On a pod every process reads only its own part of a split: a contiguous, shard-aligned block
(`process_blocks`), the same one `fstfl-copy-data --process_index I --process_count P` copies.
The shard list comes from the video indices (`<shard>.videos.json`, small, copied to every
host), so a partial copy that holds this process's shards opens like a whole data dir, and one
that lacks some says which (`open_split`). Videos keep their split-wide indices whatever block
a process reads.
"""

import bisect
import collections
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import gcs
from data_pipelines import storage
from data_pipelines.records import schema
from data_pipelines.records import source as source_lib


def read_index(shard_path: str) -> dict[str, list]:
  """The video index of a shard: columns `schema.INDEX_COLUMNS`, one entry per video.

  Raises:
    ValueError: the index is missing, unreadable, or its columns disagree in length.
  """
  path = schema.index_path(shard_path)
  try:
    index = json.loads(storage.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read the shard's video index ({e}); delete "
                     f"{os.path.basename(shard_path)} and rerun the build to rewrite both.") from e
  return _checked_index(index, path, shard_path)


def _checked_index(index: dict[str, list], path: str, shard_path: str) -> dict[str, list]:
  lengths = {len(index.get(column, ())) for column in schema.INDEX_COLUMNS}
  if len(lengths) != 1:
    raise ValueError(f"{path}: columns {list(schema.INDEX_COLUMNS)} must have equal lengths; "
                     f"delete {os.path.basename(shard_path)} and rerun the build to rewrite both.")
  return index


def read_indices(shard_paths: Sequence[str]) -> list[dict[str, list]]:
  """`read_index` of every shard, fetched concurrently from a bucket."""
  if not shard_paths or not storage.is_remote(shard_paths[0]):
    return [read_index(p) for p in shard_paths]
  paths = [schema.index_path(p) for p in shard_paths]
  try:
    texts = storage.read_files(paths)
  except (OSError, ValueError) as e:
    raise ValueError(f"{os.path.dirname(paths[0])}: cannot read the shards' video indices "
                     f"({e}); rerun the build.") from e
  return [_checked_index(json.loads(t), p, s) for t, p, s in zip(texts, paths, shard_paths)]


def split_shards(data_dir: str, split: str,
                 names: Sequence[str] | None = None) -> list[str]:
  """The complete, ordered shard list of a split, from its video indices.

  `names`: the data dir's listing, when the caller has it already.

  Raises:
    ValueError: no shards, or a shard of `-of-N` missing / two different N present.
  """
  found = collections.defaultdict(set)
  for name in storage.listdir(data_dir) if names is None else names:
    if name.endswith(schema.INDEX_SUFFIX):
      shard = schema.parse_shard_name(name.removesuffix(schema.INDEX_SUFFIX))
      if shard and shard[0] == split:
        found[shard[2]].add(shard[1])
  if not found:
    raise ValueError(f"{data_dir}: no shards for split {split!r} (expected files named "
                     f"{schema.shard_name(split, 0, 1)!r}{schema.INDEX_SUFFIX}-style).")
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
class Block:
  """The part of a split one process reads: whole shards, and the videos they hold."""
  shards: range
  videos: range


def process_blocks(videos_per_shard: Sequence[int], process_count: int) -> list[Block]:
  """Every process's contiguous block of a split, in process order.

  With at least as many shards as processes, process p reads shards
  [S * p // P, S * (p + 1) // P): whole shards, at most one shard more than 1/P of the split.
  A split with fewer shards than processes (a small test or demo split) is cut by videos
  instead, [N * p // P, N * (p + 1) // P), and a process may then share a shard with another.
  """
  num_shards = len(videos_per_shard)
  starts = np.cumsum([0, *videos_per_shard]).tolist()
  blocks = []
  for p in range(process_count):
    if num_shards >= process_count:
      shards = range(num_shards * p // process_count, num_shards * (p + 1) // process_count)
      videos = range(starts[shards.start], starts[shards.stop])
    else:
      videos = range(starts[-1] * p // process_count, starts[-1] * (p + 1) // process_count)
      first = bisect.bisect_right(starts, videos.start) - 1
      shards = (range(first, bisect.bisect_right(starts, videos.stop - 1))
                if videos else range(first, first))
    blocks.append(Block(shards, videos))
  return blocks


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
  """Class names and video counts per split, from the build settings (layout checked).

  A `gs://` data dir is first checked to answer (`gcs.check_reachable`): a wrong endpoint or
  missing credentials fail here in seconds.
  """
  gcs.check_reachable(data_dir)
  settings_path = storage.path(data_dir) / schema.SETTINGS_FILE
  if not settings_path.exists():
    if not storage.path(data_dir).is_dir():
      raise storage.StorageError(f"data dir {data_dir}: no such directory; build it with "
                                 f"`fstfl-build --dataset ... --out {data_dir}` or point "
                                 "--config.input.data_dir at a built one.")
    raise storage.StorageError(f"{settings_path}: missing; is {data_dir} a data dir built by "
                               "data_pipelines.build (fstfl-build)?")
  settings = storage.read_json(settings_path)
  schema.check_layout(data_dir, settings)
  return DatasetMeta(data_dir=data_dir, class_names=list(settings["class_names"]),
                     split_sizes=dict(settings["split_sizes"]), settings=settings)


def open_split(data_dir: str, split: str, *, process_index: int = 0,
               process_count: int = 1) -> source_lib.SplitSource:
  """Random-access videos of `split`; `source.block` is what process `process_index` reads.

  The data dir may be a partial copy (`fstfl-copy-data --process_index`): it needs every video
  index and this process's shards only.

  Raises:
    ValueError: the split is missing or incomplete, or this process's shards are absent (the
      message names them and the copy command that fetches them).
  """
  info = read_info(data_dir)
  if split not in info.split_sizes:
    raise ValueError(f"{data_dir}: no split {split!r}; has {sorted(info.split_sizes)}.")
  names = storage.listdir(data_dir)
  paths = split_shards(data_dir, split, names)
  indices = read_indices(paths)
  block = process_blocks([len(ix["video_id"]) for ix in indices],
                         process_count)[process_index]
  present = set(names)
  missing = [os.path.basename(paths[s]) for s in block.shards
             if os.path.basename(paths[s]) not in present]
  if missing:
    raise ValueError(
      f"{data_dir}: split {split!r} for process {process_index} of {process_count} needs "
      f"{len(block.shards)} shard(s), of which {len(missing)} are missing ({missing[:3]}"
      f"{' ...' if len(missing) > 3 else ''}); copy them with `fstfl-copy-data --src <bucket "
      f"data dir> --dst {data_dir} --process_index {process_index} --process_count "
      f"{process_count}`.")
  offsets = [os.path.basename(schema.offsets_path(p)) in present for p in paths]
  source = source_lib.SplitSource(paths, indices, info.num_classes, block=block.videos,
                                  offset_files=offsets)
  if len(source) != info.split_sizes[split]:
    raise ValueError(f"{data_dir}: {schema.SETTINGS_FILE} lists {info.split_sizes[split]} "
                     f"videos for {split!r} but the shard indices hold {len(source)}; rerun the "
                     "build to rewrite the metadata.")
  return source


def class_skew(labels: np.ndarray, blocks: Sequence[Block], num_classes: int) -> float:
  """The largest total-variation distance between a block's class mix and the split's.

  0: every block holds every class in proportion; 1 - 1/P: P blocks of disjoint classes (a split
  written class by class).
  """
  overall = np.bincount(labels, minlength=num_classes) / max(1, len(labels))
  worst = 0.0
  for block in blocks:
    if len(block.videos):
      mix = np.bincount(labels[block.videos.start:block.videos.stop],
                        minlength=num_classes) / len(block.videos)
      worst = max(worst, 0.5 * float(np.abs(mix - overall).sum()))
  return worst


def shuffled_skew(labels: np.ndarray, blocks: Sequence[Block], num_classes: int,
                  draws: int = 5) -> float:
  """`class_skew` that a seeded shuffle of the same labels gives (mean of `draws` orders)."""
  rng = np.random.default_rng(0)
  return float(np.mean([class_skew(rng.permutation(labels), blocks, num_classes)
                        for _ in range(draws)]))

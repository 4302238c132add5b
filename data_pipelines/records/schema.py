"""The record format shared by the shard writers and readers: names, schema, validation.

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
so a read of a clip touches only the records of its sampled frames. `build_settings.json`
carries `record_layout`; older data dirs fail with one line naming `fstfl-reshard`.

Frames are opaque bytes, not `tfds.features.Video`/`Image`: those need TensorFlow, or decode every
frame on read; here decoding is left to the input pipeline (simplejpeg).

Layout of a data dir (TFDS naming, so `tfds.builder_from_directory(d).as_data_source(split)`
reads the frame records without TensorFlow):

  <split>.array_record-00000-of-000NN  one ArrayRecord file per shard, `group_size:1`, uncompressed
  <split>.array_record-00000-of-000NN.videos.json   its video index
  <split>.array_record-00000-of-000NN.offsets.npy   where each record lies in the file
  dataset_info.json, features.json, label.labels.txt  TFDS metadata (class names, frame counts)
  build_settings.json                  how the shards were made, video counts per split, the
                                       train order (a seeded shuffle: every block of the split
                                       holds every class in proportion)

Writing lives in `records.writing`, reading in `records.reading` and `records.source`; all speak
this module's names.
Design notes: docs/data.md.
"""

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

LAYOUT = 2  # `record_layout` in build_settings.json; 1 (absent): one record per video.
FILE_FORMAT = "array_record"
SHARD_TEMPLATE = "{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SETTINGS_FILE = "build_settings.json"
INDEX_SUFFIX = ".videos.json"
# Beside each shard: int64 [records, 2], (logical start, length) of every record
# (`records.offsets`), for bounded range reads from a bucket.
OFFSETS_SUFFIX = ".offsets.npy"
PARTIAL_DIR = ".partial"
# In build_settings.json: {"shuffle_seed": s} when the train split is written in a seeded
# shuffled order (absent in data dirs built before: annotation order, often grouped by class).
TRAIN_ORDER = "train_order"

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
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"


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


_SHARD_RE = re.compile(r"^(?P<split>.+)\.array_record-(?P<shard>\d{5})-of-(?P<num>\d{5})$")


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
  """'train.array_record-00001-of-00004' -> ('train', 1, 4); other names -> None."""
  m = _SHARD_RE.match(name)
  return (m["split"], int(m["shard"]), int(m["num"])) if m else None


def index_path(shard_path: str) -> str:
  return shard_path + INDEX_SUFFIX


def offsets_path(shard_path: str) -> str:
  return shard_path + OFFSETS_SUFFIX


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
  if not isinstance(frame, bytes) or not (frame.startswith(JPEG_SOI)
                                          and frame.endswith(JPEG_EOI)):
    raise ValueError(f"{what} is not a complete JPEG image (expected bytes starting with FFD8 "
                     f"and ending with FFD9, got {type(frame).__name__} "
                     f"{bytes(frame[:4]).hex() if frame else ''}...).")
  return frame


def check_layout(data_dir: str, settings: dict[str, Any]) -> None:
  """Raises LayoutError (one line: what was found, how to fix it) unless layout `LAYOUT`."""
  found = settings.get("record_layout", 1)
  if found != LAYOUT:
    raise LayoutError(
      f"{data_dir}: record layout {found} ({'one record per video' if found == 1 else 'unknown'})"
      f", this version reads layout {LAYOUT} (one record per frame); convert it with "
      f"`fstfl-reshard --src {data_dir} --out NEW_DIR` or rebuild it with fstfl-build.")

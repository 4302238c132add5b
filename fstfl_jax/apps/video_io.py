"""Video files -> the eval views the model saw in validation, for predict and Grad-CAM.

A file goes through the dataset build's decoder (`data_pipelines.video_decode`: PyAV, short side
capped, frames stored as JPEG) with the data dir's own build settings, and then through the
eval pipeline's own `pipeline.record_views` (segment-centre sampling, short-side resize,
crops). A file that was ingested into the data dir therefore yields bit-identical views, and so
the same prediction, as its record in the eval pipeline.
"""

import dataclasses
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from data_pipelines import ingest
from data_pipelines import pipeline
from data_pipelines import storage
from data_pipelines import video_decode
from data_pipelines.records import schema

# What `data_pipelines.build` uses when a data dir carries no build settings.
DEFAULT_SHORT_SIDE, DEFAULT_QUALITY = 256, 90
_FRAME_EXTENSIONS = (".jpg", ".jpeg")


class VideoError(ValueError):
  """A file that cannot be turned into views; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How frames were stored when the dataset was built (`build_settings.json`)."""
  short_side: int = DEFAULT_SHORT_SIDE
  quality: int = DEFAULT_QUALITY


def decode_settings(data_dir: str) -> DecodeSettings:
  """The data dir's build settings, or the builder's defaults when it has none."""
  path = storage.path(data_dir) / schema.SETTINGS_FILE
  if not path.exists():
    return DecodeSettings()
  settings = storage.read_json(path)
  return DecodeSettings(int(settings.get("short_side", DEFAULT_SHORT_SIDE)),
                        int(settings.get("jpeg_quality", DEFAULT_QUALITY)))


def _is_frame_folder(path: str) -> bool:
  return any(n.lower().endswith(_FRAME_EXTENSIONS) for n in os.listdir(path))


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given; a folder -> the video files below it (sorted) and its frame folders.

  A folder that directly holds JPEG frames is one video (Something-Something V1 style). Paths
  that do not exist are kept, so that the caller reports them like any unreadable file.
  """
  out = []
  for path in paths:
    if storage.is_remote(path):
      root = storage.path(path)
      out.extend(sorted(os.fspath(p) for p in root.rglob("*")
                        if p.name.lower().endswith(ingest.VIDEO_EXTENSIONS))
                 if root.is_dir() else [path])
      continue
    if not os.path.isdir(path) or _is_frame_folder(path):
      out.append(path)
      continue
    found = []
    for root, dirs, files in os.walk(path):
      frame_dirs = [d for d in dirs if _is_frame_folder(os.path.join(root, d))]
      dirs[:] = [d for d in dirs if d not in frame_dirs]  # A frame folder is not walked into.
      found += [os.path.join(root, d) for d in frame_dirs]
      found += [os.path.join(root, n) for n in files
                if not n.startswith(".") and n.lower().endswith(ingest.VIDEO_EXTENSIONS)]
    out.extend(sorted(found))
  return out


def load_views(path: str, input_cfg: ml_collections.ConfigDict, *, clips: int, crops: int,
               settings: DecodeSettings = DecodeSettings()) -> np.ndarray:
  """Decodes `path` (a video file or a frame folder) into its test views.

  Args:
    path: the video.
    input_cfg: the config's `input` section (num_frames, sampling, resize_short, crop_size, ...).
    clips: temporal clips K.
    crops: spatial crops per clip (1, 3 or 10).
    settings: how the data dir stored frames (`decode_settings`), for bit-identical views.

  Returns:
    uint8 [V, T, S, S, 3], V = clips * crops, clip-major (the eval pipeline's layout). With
    `test_clip_sampling='random'` the clips are drawn with seed (shuffle_seed, 0).

  Raises:
    VideoError: naming `path`, when it cannot be decoded or has no frames.
  """
  # The builder's own decoder, which also fetches a file or frame folder from a bucket.
  task = video_decode.Task(path, label=0, video_id=path, short_side=settings.short_side,
                           quality=settings.quality)
  record, reason = video_decode.make_record(task)
  if record is None:
    raise VideoError(f"{path}: cannot decode ({reason}).")
  try:
    return pipeline.record_views(input_cfg, record, clips=clips, crops=crops, seed_index=0,
                                 describe=lambda frame: f"{path}: frame {frame}")
  except ValueError as e:
    raise VideoError(str(e)) from e

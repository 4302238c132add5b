"""Turns one source video (a video file or a folder of JPEG frames) into a record dict.

Runs inside build worker processes, so it imports only PyAV, numpy and simplejpeg (cheap to
spawn); a source on a bucket brings in `data_pipelines.storage` (a file is downloaded to a
temporary file first, a frame folder's frames are fetched concurrently).
Frames keep the source resolution unless the short side exceeds the cap; then they are downscaled
(area filter, aspect kept). They are never upscaled.
"""

import dataclasses
import os
from typing import Any

import av
import numpy as np
import simplejpeg

from data_pipelines import integrity

_RESAMPLE = "AREA"  # Area averaging: no aliasing when shrinking.


@dataclasses.dataclass(frozen=True)
class Task:
  """One video to turn into a record.

  Attributes:
    source: a video file, or a folder of `*.jpg` frames (sorted by name = temporal order).
    label: 0-based class index.
    video_id: id from the annotation files.
    short_side: cap on min(height, width) of the stored frames.
    quality: JPEG quality of re-encoded frames.
    fps: frame rate to record for frame folders (they carry none); video files use their own.
  """
  source: str
  label: int
  video_id: str
  short_side: int = 256
  quality: int = 90
  fps: float = 0.0


def capped_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(height, width) with min side <= short_side, aspect kept, never upscaled."""
  short = min(height, width)
  if short <= short_side:
    return height, width
  scale = short_side / short
  if height <= width:
    return short_side, max(1, round(width * scale))
  return max(1, round(height * scale)), short_side


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  """[H, W, 3] uint8 RGB -> JPEG bytes."""
  return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB")


def _record(frames: list[bytes], fps: float, height: int, width: int) -> dict[str, Any]:
  if not frames:
    raise ValueError("no frames decoded")
  return dict(frames=frames, fps=float(fps), height=height, width=width, num_frames=len(frames))


def decode_video(path: str, short_side: int, quality: int) -> dict[str, Any]:
  """Decodes every frame of a video file with PyAV; returns frames/fps/height/width/num_frames.

  Raises:
    integrity.IncompleteVideoError: clearly fewer frames than the container announces.
  """
  frames = []
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    promised = integrity.promised_frames(container, stream)
    size = None
    for frame in container.decode(stream):
      if size is None:
        size = capped_size(frame.height, frame.width, short_side)
      rgb = frame.to_ndarray(format="rgb24", height=size[0], width=size[1],
                             interpolation=_RESAMPLE)
      frames.append(encode_jpeg(rgb, quality))
  integrity.check_complete(len(frames), *promised)
  fps = float(rate) if rate else 0.0
  return _record(frames, fps, *(size or (0, 0)))


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
  frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
  return frame.to_ndarray(format="rgb24", height=height, width=width, interpolation=_RESAMPLE)


def load_frame_folder(folder: str, short_side: int, quality: int, fps: float) -> dict[str, Any]:
  """Reads `<folder>/*.jpg` in name order.

  Frames that already fit the cap keep their original JPEG bytes (no generation loss); the header
  is still parsed so a corrupt file fails here, not during training. Gaps in the frame numbers
  beyond `integrity`'s tolerance fail too (`integrity.IncompleteVideoError`).
  """
  if _remote(folder):
    from data_pipelines import storage  # pylint: disable=g-import-not-at-top
    listed, read = storage.listdir(folder), storage.read_files
  else:
    listed, read = os.listdir(folder), _read_local
  names = sorted(n for n in listed if n.lower().endswith((".jpg", ".jpeg")))
  integrity.check_complete(len(names), *integrity.folder_promise(names))
  frames, size = [], None
  for name, data in zip(names, read([os.path.join(folder, n) for n in names])):
    try:
      height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      if size is None:
        size = capped_size(height, width, short_side)
      keep = ((height, width) == size and colorspace == "YCbCr"
              and data.endswith(b"\xff\xd9"))
      if not keep:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
        if rgb.shape[:2] != size:
          rgb = _resize(rgb, *size)
        data = encode_jpeg(rgb, quality)
    except ValueError as e:  # Names the frame: a truncated or corrupt JPEG.
      raise ValueError(f"{name}: {e}") from e
    frames.append(data)
  return _record(frames, fps, *(size or (0, 0)))


def _remote(path: str) -> bool:
  return "://" in path


def _read_local(paths: list[str]) -> list[bytes]:
  out = []
  for path in paths:
    with open(path, "rb") as f:
      out.append(f.read())
  return out


def make_record(task: Task) -> tuple[dict[str, Any] | None, str | None]:
  """(record, None) on success, (None, reason) when the source cannot be decoded."""
  local = task.source
  try:
    if _remote(task.source):
      from data_pipelines import storage  # pylint: disable=g-import-not-at-top
      source = storage.path(task.source)
      if source.is_dir():
        record = load_frame_folder(task.source, task.short_side, task.quality, task.fps)
      elif source.exists():
        with storage.local_file(task.source) as local:
          record = decode_video(local, task.short_side, task.quality)
      else:
        return None, "not found"
    elif os.path.isdir(task.source):
      record = load_frame_folder(task.source, task.short_side, task.quality, task.fps)
    elif os.path.isfile(task.source):
      record = decode_video(task.source, task.short_side, task.quality)
    else:
      return None, "not found"
  except Exception as e:  # FFmpeg/libjpeg raise many types; any of them means "skip this video".
    # FFmpeg names the file it opened: the source, not a temporary download of it.
    return None, f"{type(e).__name__}: {e}".replace(local, task.source)
  return dict(record, label=task.label, video_id=task.video_id), None

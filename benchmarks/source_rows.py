"""Why shards: sampled-frame rates from video files (PyAV), TFDS's reader and ours, same content.

For one video length (e.g. 4 s at 12 fps, Something-Something; 10 s at 25 fps, Kinetics) the
same synthetic frames are written twice: as h264 `.mp4` files (libx264 defaults, yuv420p) and as
JPEG shards (`records`, quality 90). Then, on one thread, for the same TSN-sampled clips:

  PyAV        open the file and decode in order up to the last sampled frame, keeping the
              sampled ones as RGB arrays (what MMAction2-style loaders do with `.mp4`/`.webm`;
              h264 cannot decode a frame without the ones it references)
  TFDS        `tfds.builder_from_directory(d).as_data_source("train")[i]` for each sampled
              frame record (TFDS's generic example parser), then simplejpeg
  ours        `reading.open_split(d, "train")[v]["frames"]` and `transforms.JpegFrames`

Each row reports frames delivered per CPU-second (and per wall second).
"""

import os
import time

import av
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import sampling
from data_pipelines import transforms
from data_pipelines import video_decode
from data_pipelines.records import reading
from data_pipelines.records import writing


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
  """uint8 [N, H, W, 3] RGB -> h264 `.mp4` at `fps`."""
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def pyav_clip(path: str, indices: np.ndarray) -> list[np.ndarray]:
  """The frames `indices` [T] of a video file as RGB [H, W, 3], decoded in order."""
  wanted = {int(i) for i in indices}
  last = max(wanted)
  frames = {}
  with av.open(path) as container:
    for i, frame in enumerate(container.decode(video=0)):
      if i in wanted:
        frames[i] = frame.to_ndarray(format="rgb24")
      if i == last:
        break
  return [frames[int(i)] for i in indices]


def _rate(setting: str, fn, num_frames: int) -> dict:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return dict(setting=setting, frames_s=num_frames / wall, frames_cpu_s=num_frames / cpu)


def build(out_dir: str, videos: list[np.ndarray], fps: int, num_records: int,
          quality: int = 90) -> list[str]:
  """Writes the `.mp4` of every distinct video and a shard dir cycling over them; -> mp4 paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for v, frames in enumerate(videos):
    paths.append(os.path.join(out_dir, f"video{v}.mp4"))
    write_mp4(paths[-1], frames, fps)
  jpegs = [[video_decode.encode_jpeg(f, quality) for f in frames] for frames in videos]
  height, width = videos[0].shape[1:3]
  writing.write_split(out_dir, "train", (
    dict(frames=jpegs[r % len(videos)], label=0, video_id=f"video{r:04d}", fps=float(fps),
         height=height, width=width, num_frames=len(jpegs[0])) for r in range(num_records)),
    num_shards=2)
  writing.write_metadata(out_dir, ["class 0"], ["train"], dict(source="benchmarks.source_rows"))
  return paths


def rows(data_dir: str, paths: list[str], num_frames: int, num_clips: int,
         rng: np.random.Generator) -> list[dict]:
  """PyAV, TFDS and our reader on the same `num_clips` TSN clips (module docstring)."""
  ours = reading.open_split(data_dir, "train")
  tfds_source = tfds.builder_from_directory(data_dir).as_data_source("train")
  # Global frame-record index of every video's first frame, from our video index.
  shard_start = np.cumsum([0] + [writing.count_records(p) for p in ours.paths]).tolist()
  first = [shard_start[shard] + record
           for shard, record in (ours.record_of(v, 0) for v in range(len(ours)))]
  clips = [(v % len(ours), sampling.tsn_train(ours[0]["num_frames"], num_frames, rng))
           for v in range(num_clips)]
  total = num_clips * num_frames

  def from_files():
    for v, idx in clips:
      pyav_clip(paths[v % len(paths)], idx)

  def from_tfds():
    for v, idx in clips:
      for i in idx:
        transforms.decode_jpeg(tfds_source[first[v] + int(i)]["jpeg"])

  def from_ours():
    for v, idx in clips:
      frames = transforms.JpegFrames(ours[v]["frames"], idx, str)
      for t in range(len(frames)):
        frames[t]

  return [_rate("PyAV: sampled frames decoded from the .mp4 files, 1 thread", from_files, total),
          _rate("TFDS as_data_source over the shards + simplejpeg, 1 thread", from_tfds, total),
          _rate("our reader (reading.open_split) + simplejpeg, 1 thread", from_ours, total)]

"""Train input pipeline throughput next to the raw JPEG decode rate of the same frames.

  python -m benchmarks.pipeline --json out.json    # synthetic 256x340 videos in a temp dir
  python -m benchmarks.pipeline --data_dir data/sthv1 --threads 1,2,4 --workers 0,2 --sources=

For each frame count T (`--num_frames`, default 8, 16, 32) and reader setting, the train
pipeline (`make_train_iter`: host half of the augmentation; the crop/resize/flip it leaves to
the device is not run) produces `--batches` batches after `--warmup` batches. Reported per row:
clips/s and frames/s (wall clock), frames per CPU-second of this process and its grain workers
(wall rates are noisy on a shared machine, CPU-seconds much less), and the ratios to the raw
decode row, which decodes the same sampled frames from in-memory bytes with simplejpeg on one
thread. A second reference row adds the crop/resize/flip on the host with cv2 (what the
pipeline did before they moved into the jitted step), a third also RandAugment
(`rand-m9-mstd0.5`, the `gsf_reference` recipe), whose cost per clip is printed under the table.
The shards are read once before every pipeline row, so its reads come from the page cache
(a disk-bound host pays its I/O on top). All rows run `--rounds` times, interleaved, and each
keeps its best round. The JSON's top-level
`pipeline_vs_raw_decode` is the best pipeline row's frames per CPU-second over the raw decode
row's, at the first T. Goal: >= 0.85.

A last table per video length (`--sources`, default 4 s at 12 fps and 10 s at 25 fps, the same
synthetic content as `.mp4` files and as shards) compares decoding the sampled frames from the
video files with PyAV, TFDS's `as_data_source` over the shards, and our reader
(`benchmarks/source_rows.py`).
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

from benchmarks import source_rows
from configs.common import input_config
from data_pipelines import device_transforms
from data_pipelines import pipeline
from data_pipelines import randaugment as randaugment_lib
from data_pipelines import sampling
from data_pipelines import transforms
from data_pipelines import video_decode
from data_pipelines.records import reading
from data_pipelines.records import writing

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Built dataset; default: a synthetic one.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_FRAMES = flags.DEFINE_list("num_frames", ["8", "16", "32"],
                            "Frames per clip (T); one table each. The JSON's "
                            "pipeline_vs_raw_decode is for the first.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Clips per batch.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches per setting.")
_THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "num_threads values to time.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "num_workers values (0: threads only).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_ROUNDS = flags.DEFINE_integer(
  "rounds", 3, "Rounds over all rows; each row keeps its best round (most frames per CPU-second): "
  "other load on a shared machine only ever slows a measurement down.")
# Grain's index shuffle has a roughly fixed cost per epoch, spread over the dataset's N elements:
# tiny datasets would mostly measure the shuffle.
_SYN_VIDEOS = flags.DEFINE_integer("synthetic_videos", 1024, "Synthetic dataset size.")
_SYN_FRAMES = flags.DEFINE_integer("synthetic_frames", 48,
                                   "Frames per synthetic video (48: 4 s at 12 fps).")
_SOURCES = flags.DEFINE_list(
  "sources", ["4@12", "10@25"], "Video lengths seconds@fps for the PyAV / TFDS / our reader "
  "table (same synthetic content as .mp4 and as shards); empty: no such table.")
_SOURCE_CLIPS = flags.DEFINE_integer("source_clips", 48, "Clips per row of that table.")
RANDAUGMENT = "rand-m9-mstd0.5"  # The gsf_reference recipe's setting.


def synthetic_video(rng: np.random.Generator, num_frames: int, height: int = 256,
                    width: int = 340) -> np.ndarray:
  """uint8 [N, H, W, 3]: a drifting smooth texture with grain (~25 kB per JPEG at quality 90)."""
  base = cv2.resize(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), (width + num_frames, height),
                    interpolation=cv2.INTER_LINEAR)
  return np.stack([np.clip(base[:, f:f + width].astype(np.int16)
                           + rng.integers(-3, 4, (height, width, 3)), 0, 255).astype(np.uint8)
                   for f in range(num_frames)])


def synthetic_pool(num_videos: int, num_frames: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [synthetic_video(rng, num_frames) for _ in range(num_videos)]


def build_synthetic(out_dir: str, num_videos: int, num_frames: int) -> None:
  """`num_videos` records cycling over 32 distinct encoded videos (encoding is the slow part)."""
  start = time.perf_counter()
  pool = [[video_decode.encode_jpeg(f, 90) for f in frames]
          for frames in synthetic_pool(min(32, num_videos), num_frames)]
  videos = (dict(frames=pool[v % len(pool)], label=v % 10, video_id=f"synthetic{v:05d}",
                 fps=12.0, height=256, width=340, num_frames=num_frames)
            for v in range(num_videos))
  writing.write_split(out_dir, "train", videos, num_shards=8)
  writing.write_metadata(out_dir, [f"class {k}" for k in range(10)], ["train"],
                         dict(source="benchmarks.pipeline synthetic"))
  logging.info("Built %d synthetic videos x %d frames in %.1f s.", num_videos, num_frames,
               time.perf_counter() - start)


def source_tables(tmp: str, num_frames: int) -> tuple[list[dict], str]:
  """PyAV / TFDS / our reader rows per `--sources` video length, best of `--rounds`."""
  out_rows, tables = [], []
  for spec in _SOURCES.value:
    seconds, fps = (int(x) for x in spec.split("@"))
    # Same generator and seed as the main dataset: at 4 s @ 12 fps, the same frames.
    pool = synthetic_pool(4, seconds * fps)
    data_dir = os.path.join(tmp, f"sources_{seconds}s_{fps}fps")
    paths = source_rows.build(data_dir, pool, fps, num_records=16)
    del pool
    rows = best_of([source_rows.rows(data_dir, paths, num_frames, _SOURCE_CLIPS.value,
                                     np.random.default_rng(r)) for r in range(_ROUNDS.value)])
    ours = rows[-1]["frames_cpu_s"]
    lines = [f"{seconds} s at {fps} fps ({seconds * fps} frames, 256x340), T={num_frames}, "
             f"{_SOURCE_CLIPS.value} clips, best of {_ROUNDS.value} rounds\n",
             "| setting | frames/s | frames/CPU-s | vs our reader (CPU) |", "|---|---:|---:|---:|"]
    for row in rows:
      row.update(video=f"{seconds} s at {fps} fps", num_frames=num_frames)
      lines.append(f"| {row['setting']} | {row['frames_s']:.0f} | {row['frames_cpu_s']:.0f} | "
                   f"{row['frames_cpu_s'] / ours:.0%} |")
    out_rows += rows
    tables.append("\n".join(lines))
  return out_rows, "\n\n".join(tables)


def raw_decode(data_dir: str, split: str, cfg, num_clips: int) -> list[dict]:
  """Single-thread rates on the frames TSN sampling picks, from in-memory bytes.

  Two reference rows: simplejpeg decode alone, and decode + the train crop/resize/flip (what a
  pipeline with zero reading, batching and threading overhead would reach).
  """
  source = reading.open_split(data_dir, split)
  rng = np.random.default_rng(0)
  clips = []
  for i in range(num_clips):
    record = source[(i * 7919) % len(source)]
    idx = sampling.tsn_train(len(record["frames"]), cfg.num_frames, rng)
    clips.append([record["frames"][int(f)] for f in idx])
  height, width = transforms.decode_jpeg(clips[0][0]).shape[:2]

  def decode_only():
    for clip in clips:
      for data in clip:
        transforms.decode_jpeg(data)

  def decode_augment(randaugment=None):
    # The whole augmentation on the host with cv2, as the pipeline did before the resize moved
    # to the device.
    for clip in clips:
      frames = transforms.JpegFrames(clip, range(len(clip)), str)
      box = transforms.sample_multiscale_box(height, width, cfg.crop_size, cfg.scales, rng)
      flip = bool(rng.random() < 0.5)
      if randaugment is not None:
        frames = randaugment_lib.AugmentedFrames(frames,
                                                 randaugment_lib.sample_plan(randaugment, rng))
      transforms.crop_resize(frames, box, cfg.crop_size, flip)

  rows = []
  for setting, fn in [("raw simplejpeg decode, 1 thread", decode_only),
                      ("decode + host crop/resize/flip (cv2), 1 thread", decode_augment),
                      (f"decode + RandAugment {RANDAUGMENT} + crop/resize/flip, 1 thread",
                       lambda: decode_augment(randaugment_lib.parse_spec(RANDAUGMENT)))]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    frames = num_clips * cfg.num_frames
    rows.append(dict(setting=setting, clips_s=num_clips / wall, frames_s=frames / wall,
                     frames_cpu_s=frames / cpu, cores=1, frame_size=f"{height}x{width}",
                     ms_cpu_clip=1e3 * cpu / num_clips))
  return rows


def cpu_seconds() -> float:
  """CPU time of this process plus its live child processes (grain workers), Linux /proc."""
  total = time.process_time()
  ticks = os.sysconf("SC_CLK_TCK")
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # The process ended meanwhile.
      continue
    if int(fields[1]) == os.getpid():  # ppid; then utime, stime at fields 11, 12.
      total += (int(fields[11]) + int(fields[12])) / ticks
  return total


def warm_page_cache(data_dir: str, split: str) -> None:
  """Reads the split's shards once: the timed reads then come from the page cache, as the raw
  decode row's bytes come from memory (the host reclaims cold file pages within minutes)."""
  for path in reading.shard_paths(data_dir, split):
    with open(path, "rb") as f:
      while f.read(64 << 20):
        pass


def time_pipeline(cfg, threads: int, workers: int) -> dict:
  cfg = cfg.copy_and_resolve_references()
  cfg.num_threads, cfg.num_workers = threads, workers
  warm_page_cache(cfg.data_dir, cfg.train_split)
  it = pipeline.make_train_iter(cfg)
  # Worker processes fill their buffers while the first batch waits for them to start; drain
  # those so the timed batches measure the steady production rate.
  for _ in range(_WARMUP.value + 2 * cfg.prefetch * workers):
    next(it)
  wall, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(_BATCHES.value):
    batch = next(it)
  wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
  clips = _BATCHES.value * cfg.batch_size
  frames = clips * cfg.num_frames
  assert batch["video"].shape[:2] == (cfg.batch_size, cfg.num_frames)
  assert batch[device_transforms.TAPS_KEY].shape == (cfg.batch_size, 2, cfg.crop_size, 3)
  setting = f"pipeline, {threads} threads" + (f", {workers} workers" if workers else "")
  cores = min(len(os.sched_getaffinity(0)), threads * max(1, workers))
  return dict(setting=setting, clips_s=clips / wall, frames_s=frames / wall,
              frames_cpu_s=frames / cpu, cores=cores)


def markdown(rows: list[dict], raw: dict) -> str:
  lines = ["| setting | clips/s | frames/s | frames/CPU-s | vs raw decode (CPU) | "
           "vs raw decode (wall, per core) |", "|---|---:|---:|---:|---:|---:|"]
  plain, with_ra = rows[1], rows[2]
  cost = with_ra["ms_cpu_clip"] - plain["ms_cpu_clip"]
  footer = (f"\nRandAugment {RANDAUGMENT} costs {cost:.1f} CPU-ms per clip (third reference row "
            "minus the second).")
  for row in rows:
    cpu_ratio = "" if row is raw else f"{row['frames_cpu_s'] / raw['frames_cpu_s']:.0%}"
    # Per core it could use: min(available cores, reader threads x processes).
    wall_ratio = "" if row is raw else f"{row['frames_s'] / row['cores'] / raw['frames_s']:.0%}"
    lines.append(f"| {row['setting']} | {row['clips_s']:.1f} | {row['frames_s']:.0f} | "
                 f"{row['frames_cpu_s']:.0f} | {cpu_ratio} | {wall_ratio} |")
  return "\n".join(lines) + footer


def one_round(data_dir: str, cfg) -> list[dict]:
  """Every row once, reference rows first."""
  clips = (_WARMUP.value + _BATCHES.value) * _BATCH.value
  rows = raw_decode(data_dir, _SPLIT.value, cfg, clips)
  for workers in map(int, _WORKERS.value):
    for threads in map(int, _THREADS.value):
      rows.append(time_pipeline(cfg, threads, workers))
  return rows


def best_of(rounds: list[list[dict]]) -> list[dict]:
  """Per setting, the round with the most frames per CPU-second (rows in first-round order)."""
  best = {}
  for rows in rounds:
    for row in rows:
      if row["setting"] not in best or row["frames_cpu_s"] > best[row["setting"]]["frames_cpu_s"]:
        best[row["setting"]] = row
  return list(best.values())


def pipeline_ratio(rows: list[dict]) -> float:
  """Best pipeline row's frames per CPU-second over the raw decode row's."""
  best = max(r["frames_cpu_s"] for r in rows if r["setting"].startswith("pipeline"))
  return best / rows[0]["frames_cpu_s"]


def main(argv):
  del argv
  tables, all_rows, ratios = [], [], {}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value
    if data_dir is None:
      data_dir = tmp
      build_synthetic(data_dir, _SYN_VIDEOS.value, _SYN_FRAMES.value)
    for num_frames in map(int, _FRAMES.value):
      cfg = input_config("k400", num_frames)
      cfg.update(dict(data_dir=data_dir, train_split=_SPLIT.value, batch_size=_BATCH.value,
                      flip="flip"))
      rows = best_of([one_round(data_dir, cfg) for _ in range(_ROUNDS.value)])
      ratios[num_frames] = pipeline_ratio(rows)
      logging.info("T=%d: pipeline / raw decode %.3f.", num_frames, ratios[num_frames])
      all_rows += [dict(row, num_frames=num_frames) for row in rows]
      tables.append(f"T={num_frames}, batch {_BATCH.value}, crop {cfg.crop_size}, frames "
                    f"{rows[0]['frame_size']}, best of {_ROUNDS.value} rounds; pipeline / raw "
                    f"decode {ratios[num_frames]:.2f}\n\n" + markdown(rows, rows[0]))
    sources, table = source_tables(tmp, int(_FRAMES.value[0])) if _SOURCES.value else ([], "")
    if table:
      tables.append(table)
  header = (f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}")
  print(header + "\n\n" + "\n\n".join(tables))
  if _JSON.value:
    first = int(_FRAMES.value[0])
    with open(_JSON.value, "w") as f:
      json.dump(dict(header=header, rows=all_rows, pipeline_vs_raw_decode=ratios[first],
                     pipeline_vs_raw_decode_by_frames=ratios, source_rows=sources), f, indent=2)


if __name__ == "__main__":
  app.run(main)

"""Grain input pipelines over the video records of `data_pipelines.records`.

Train: this process's block of the split -> shuffle (reshuffled every epoch) -> repeat -> batch of
indices -> `random_map` (per clip: sample frame indices, read and decode only those frames
straight into the batch array, optional clip-level RandAugment, draw the multi-scale crop box
and the flip) -> prefetch (reader threads, or worker processes when `num_workers > 0`).
All randomness comes from grain's per-element rng, so the iterator state (`get_state`, or
`grain.checkpoint.CheckpointSave` in an Orbax CheckpointManager) fully determines the stream.

Each process reads a contiguous, shard-aligned block of the split
(`records.reading.process_blocks`), for train and eval, so on a pod a host needs (or copies)
only its own shards.
Eval: every record exactly once; each process pads its block to the same number of whole batches
(the largest block's) with masked-out (`mask=False`, `index=-1`) elements.

Batches are host numpy arrays of this process's clips (B = global batch / process_count):
  train: video uint8 [B, T, R, Wmax, 3] (whole frames at stored resolution, stored flat),
         frame_width int32 [B], resize_taps float32 [B, 2, S, 3], label int32 [B]
         (`device_transforms`); `device_transforms.train_video(batch)` -> uint8 [B, T, S, S, 3]
         inside the jitted step
  eval:  video uint8 [B, V, T, S, S, 3] (V = clips * crops, clip-major), label int32 [B],
         mask bool [B], index int32 [B] (record index in the split, -1 on padding),
         video_id str [B] (the record's id, "" on padding)
"""

import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
import grain
import ml_collections
import numpy as np

from data_pipelines import device_transforms
from data_pipelines import randaugment
from data_pipelines import sampling
from data_pipelines import transforms
from data_pipelines.records import reading


def _per_process(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f"{what}={global_batch} is not divisible by process_count={process_count}.")
  return global_batch // process_count


class _ClipReader:
  """Reads records of one split; decodes only the sampled frames, with errors that locate them.

  `source.block` holds the split indices this process reads.
  """

  def __init__(self, data_dir: str, split: str, process_index: int = 0, process_count: int = 1):
    self.data_dir = data_dir
    self.split = split
    self.source = reading.open_split(data_dir, split, process_index=process_index,
                                     process_count=process_count)

  def __len__(self) -> int:
    return len(self.source)

  def read(self, index: int) -> dict[str, Any]:
    try:
      return self.source[index]
    except ValueError as e:
      raise ValueError(f"{self.data_dir}: split {self.split!r} record {index}: {e}") from e

  def describe(self, record: dict[str, Any], index: int) -> Callable[[int], str]:
    """Frame index -> where that frame of record `index` is, for errors."""
    return lambda frame: (f"{self.data_dir}: split {self.split!r} record {index} "
                          f"(video_id {record['video_id']!r}) frame {frame}")

  def frames(self, record: dict[str, Any], index: int,
             frame_indices: np.ndarray) -> transforms.JpegFrames:
    """Frames `frame_indices` [T] of the record, decoded lazily; errors name the frame."""
    return transforms.JpegFrames(record["frames"], frame_indices, self.describe(record, index))


class _BufferPool:
  """Reuses batch arrays that nobody references any more (thread-safe).

  A fresh array of tens of MB costs a page fault per page and cold-cache writes, as much as a
  fifth of the JPEG decoding that fills it; an array whose only reference is the pool's is free
  (a consumer that keeps a batch, or a device array aliasing it, holds a reference).
  """

  def __init__(self, size: int):
    self.size = size
    self._arrays = []
    self._lock = threading.Lock()

  def get(self, shape: tuple[int, ...]) -> np.ndarray:
    with self._lock:
      for array in self._arrays:
        # CPython references: the pool's list, the loop variable, getrefcount's argument.
        if array.shape == shape and sys.getrefcount(array) <= 3:
          return array
      array = np.empty(shape, np.uint8)
      if len(self._arrays) < self.size:
        self._arrays.append(array)
      return array

  def __getstate__(self) -> dict[str, Any]:
    return dict(size=self.size)

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["size"])


class TrainBatch(grain.transforms.RandomMap):
  """Record indices [B] -> one train batch (module docstring) with TSN augmentation.

  Host: sample frames, decode them straight into the batch array, draw box, flip and optional
  RandAugment per clip. Device: crop, resize and mirror (`device_transforms.train_video`).
  The clips draw in order from the batch's grain rng.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, reader: _ClipReader,
               flip_labels: np.ndarray | None):
    if cfg.flip not in transforms.FLIP_POLICIES:
      raise ValueError(f"Unknown flip policy {cfg.flip!r}; expected {transforms.FLIP_POLICIES}.")
    self.reader = reader
    self.num_frames = cfg.num_frames
    self.sampling = cfg.sampling
    self.dense_stride = cfg.dense_stride
    self.crop_size = cfg.crop_size
    self.scales = tuple(cfg.scales)
    self.allow_flip = cfg.flip != "none"
    self.flip_labels = flip_labels
    self.randaugment = randaugment.parse_spec(cfg.get("randaugment", ""))
    index = reader.source.index
    self.slot = transforms.frame_slot(set(zip(index["height"], index["width"])))
    # Batches alive at once: prefetched, being filled by each reader thread, in use downstream.
    threads, _ = host_parallelism(cfg)
    self.buffers = _BufferPool(2 * max(threads, cfg.prefetch) + threads + 2)

  def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch = len(indices)
    video = self.buffers.get((batch, self.num_frames, *self.slot, 3))
    taps = np.empty((batch, 2, self.crop_size, 3), np.float32)
    width = np.empty(batch, np.int32)
    label = np.empty(batch, np.int32)
    for b, index in enumerate(indices):
      record = self.reader.read(int(index))
      idx = sampling.train_indices(len(record["frames"]), self.num_frames, rng,
                                   sampling=self.sampling, dense_stride=self.dense_stride)
      frames = self.reader.frames(record, int(index), idx)
      flipped = transforms.augment_train(
        frames, height=frames.height, width=frames.width, crop_size=self.crop_size,
        scales=self.scales, allow_flip=self.allow_flip, rng=rng, out=video[b], taps=taps[b],
        randaugment=self.randaugment)
      width[b] = frames.width
      label[b] = record["label"]
      if flipped and self.flip_labels is not None:
        label[b] = self.flip_labels[label[b]]
    return {"video": video, device_transforms.WIDTH_KEY: width, device_transforms.TAPS_KEY: taps,
            "label": label}


def record_views(input_cfg: ml_collections.ConfigDict, record: dict[str, Any], *, clips: int,
                 crops: int, seed_index: int, describe: Callable[[int], str]) -> np.ndarray:
  """The test views of one decoded record, as the eval pipeline makes them.

  Args:
    input_cfg: the config's `input` section (num_frames, sampling, resize_short, crop_size, ...).
    record: a record of `data_pipelines.records` (JPEG `frames`, ...).
    clips: temporal clips K.
    crops: spatial crops per clip (1, 3 or 10).
    seed_index: seeds random test clips with (shuffle_seed, seed_index), so they depend only on
      the record (its index in the split), not on batching or process count.
    describe: frame index -> where the frame is, for errors.

  Returns:
    uint8 [V, T, S, S, 3], V = clips * crops, clip-major.
  """
  cfg = input_cfg
  rng = np.random.default_rng([cfg.shuffle_seed, seed_index])
  idx = sampling.eval_indices(len(record["frames"]), cfg.num_frames, clips,
                              sampling=cfg.sampling, dense_stride=cfg.dense_stride,
                              clip_sampling=cfg.test_clip_sampling, rng=rng)
  return np.concatenate([
    transforms.eval_views(transforms.JpegFrames(record["frames"], clip, describe),
                          resize_short=cfg.resize_short, crop_size=cfg.crop_size, crops=crops)
    for clip in idx])


class EvalClip(grain.transforms.Map):
  """Position in this process's padded block -> dict(video, label, mask, index, video_id)."""

  def __init__(self, cfg: ml_collections.ConfigDict, reader: _ClipReader, *, clips: int,
               crops: int):
    transforms.eval_boxes(cfg.resize_short, cfg.resize_short, cfg.crop_size, crops)  # Validate.
    self.cfg = cfg
    self.reader = reader
    self.clips, self.crops = clips, crops

  def map(self, position: int) -> dict[str, np.ndarray]:
    block = self.reader.source.block
    index = block.start + position
    if index >= block.stop:
      size = self.cfg.crop_size
      shape = (self.clips * self.crops, self.cfg.num_frames, size, size, 3)
      return dict(video=np.zeros(shape, np.uint8), label=np.int32(0), mask=np.bool_(False),
                  index=np.int32(-1), video_id=np.str_(""))
    record = self.reader.read(index)
    video = record_views(self.cfg, record, clips=self.clips, crops=self.crops, seed_index=index,
                         describe=self.reader.describe(record, index))
    return dict(video=video, label=np.int32(record["label"]), mask=np.bool_(True),
                index=np.int32(index), video_id=np.str_(record["video_id"]))


def _flip_labels(cfg: ml_collections.ConfigDict) -> np.ndarray | None:
  if cfg.flip != "flip_swap_labels":
    return None
  names = reading.read_info(cfg.data_dir).class_names
  pairs = transforms.swap_pairs_from_names(names)
  if pairs:
    logging.info("Flip swaps labels %s.", [(names[i], names[j]) for i, j in pairs])
  else:
    logging.warning("flip='flip_swap_labels' but no left/right class pairs in %s.", cfg.data_dir)
  return transforms.flip_label_map(len(names), pairs)


def host_parallelism(cfg: ml_collections.ConfigDict,
                     cores: int | None = None) -> tuple[int, int]:
  """(reader threads, worker processes) for this host; -1 in the config means "from the cores".

  Up to 8 cores, threads in-process win (JPEG decode and resizing release the GIL; measured on
  2 cores, see docs/benchmarks.md, "Input pipeline on CPU"). Above that the Python part of each clip
  becomes the limit, so one worker process per 8 cores (at most 32), each with enough
  threads to keep its cores busy. A resumed run must use the same worker count as the run
  that wrote the checkpoint (the iterator state depends on it): set both explicitly when
  resuming on another machine type.
  """
  cores = cores or len(os.sched_getaffinity(0))
  workers = cfg.num_workers
  if workers < 0:
    workers = 0 if cores <= 8 else min(32, cores // 8)
  threads = cfg.num_threads
  if threads < 0:
    threads = min(16, max(2, cores // max(1, workers)))
  return threads, workers


def _prefetch(ds: grain.MapDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
  """Batches from reader threads; optionally from worker processes."""
  threads, workers = host_parallelism(cfg)
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, cfg.prefetch))
  ds = ds.to_iter_dataset(read)
  if workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=max(1, cfg.prefetch)))
  return ds


def make_train_iter(input_cfg: ml_collections.ConfigDict, *, process_index: int = 0,
                    process_count: int = 1, seed: int | None = None) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of this process's train batches (see module docstring)."""
  cfg = input_cfg
  batch = _per_process(cfg.batch_size, process_count, "batch_size")
  reader = _ClipReader(cfg.data_dir, cfg.train_split, process_index, process_count)
  seed = cfg.shuffle_seed if seed is None else seed
  # Processes shuffle their own blocks; a per-process seed also decorrelates their augmentations.
  process_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
  block = reader.source.block
  ds = grain.MapDataset.range(block.start, block.stop)
  if len(ds) < batch:
    raise ValueError(f"{cfg.data_dir} split {cfg.train_split!r}: {len(ds)} records for process "
                     f"{process_index}, fewer than one batch of {batch}.")
  ds = ds.seed(process_seed).shuffle().repeat().batch(batch, drop_remainder=True)
  ds = ds.random_map(TrainBatch(cfg, reader, _flip_labels(cfg)))
  return iter(_prefetch(ds, cfg))


def _eval_layout(reader: _ClipReader, eval_batch_size: int,
                 process_count: int) -> tuple[int, int]:
  """(per-process batch, batches per process): equal on every process, for the largest block."""
  batch = _per_process(eval_batch_size, process_count, "eval_batch_size")
  largest = max(len(b.videos) for b in reading.process_blocks(reader.source.videos_per_shard,
                                                              process_count))
  return batch, -(-largest // batch)


def num_eval_batches(input_cfg: ml_collections.ConfigDict, *, split: str | None = None,
                     process_index: int = 0, process_count: int = 1) -> int:
  """Batches `make_eval_iter` yields on every process (opened as this process, whose part of
  the data dir may be all there is)."""
  reader = _ClipReader(input_cfg.data_dir, split or input_cfg.eval_split, process_index,
                       process_count)
  return _eval_layout(reader, input_cfg.eval_batch_size, process_count)[1]


def make_eval_iter(input_cfg: ml_collections.ConfigDict, *, split: str | None = None,
                   process_index: int = 0, process_count: int = 1, clips: int | None = None,
                   crops: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split`, every record exactly once over all processes (module docstring)."""
  cfg = input_cfg
  split = split or cfg.eval_split
  reader = _ClipReader(cfg.data_dir, split, process_index, process_count)
  batch, num_batches = _eval_layout(reader, cfg.eval_batch_size, process_count)
  ds = grain.MapDataset.range(num_batches * batch).map(EvalClip(
    cfg, reader, clips=clips or cfg.test_clips, crops=crops or cfg.test_crops)).batch(batch)
  return iter(_prefetch(ds, cfg))

"""Grain pipelines on tiny written datasets whose pixels name their video and frame.

Every frame is solid in two channels: R = 10 * frame + 5 and G = 10 * video + 5, and
B = 3 * column + 20 is a ramp, so a batch tells which video, which frames and whether it was
mirrored, without trusting any pipeline metadata.
"""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import simplejpeg

from configs.common import input_config
from data_pipelines import device_transforms
from data_pipelines import pipeline
from data_pipelines import transforms
from data_pipelines.records import writing

NUM_FRAMES, HEIGHT, WIDTH = 12, 48, 64
NUM_TRAIN, NUM_VAL = 12, 7
CLASS_NAMES = [f"class {k}" for k in range(NUM_TRAIN)]
CLASS_NAMES[2] = "Pushing something from left to right"
CLASS_NAMES[3] = "Pushing something from right to left"
CLASS_NAMES[5], CLASS_NAMES[9] = "Turning the camera left", "Turning the camera right"


def encode(frame):
  # 4:4:4 keeps the per-channel codes within a few levels.
  return simplejpeg.encode_jpeg(frame, quality=95, colorspace="RGB", colorsubsampling="444")


def make_frame(video, index):
  frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
  frame[..., 0] = 10 * index + 5
  frame[..., 1] = 10 * video + 5
  frame[..., 2] = 3 * np.arange(WIDTH) + 20
  return frame


def make_record(video, num_frames=NUM_FRAMES, bad_frames=()):
  bad = b"\xff\xd8 not a jpeg body \xff\xd9"  # Framed like a JPEG, so only decoding fails.
  return dict(frames=[bad if f in bad_frames else encode(make_frame(video, f))
                      for f in range(num_frames)],
              label=video, video_id=f"vid{video:03d}", fps=12.0, height=HEIGHT, width=WIDTH,
              num_frames=num_frames)


def write_dataset(path, train, val):
  writing.write_split(path, "train", train, num_shards=2)
  writing.write_split(path, "validation", val, num_shards=1)
  writing.write_metadata(path, CLASS_NAMES, ["train", "validation"], dict(source="test"))
  return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  # The last validation video is shorter than T (n < T case).
  val = [make_record(v) for v in range(NUM_VAL - 1)] + [make_record(NUM_VAL - 1, num_frames=3)]
  train = [make_record(v) for v in range(NUM_TRAIN)]
  return write_dataset(tmp_path_factory.mktemp("videos"), train, val)


def config(data_dir, **overrides):
  cfg = input_config("demo", 4)
  cfg.update(dict(data_dir=data_dir, crop_size=32, resize_short=48, batch_size=4,
                  eval_batch_size=4, num_threads=2, flip="none"))
  cfg.update(overrides)
  return cfg


def decode_codes(video):
  """uint8 [..., T, S, S, 3] -> (video ids [...], frame indices [..., T]) from the pixel codes."""
  centre = video[..., video.shape[-3] // 2, video.shape[-2] // 2, :].astype(int)
  frames = np.rint((centre[..., 0] - 5) / 10).astype(int)
  videos = np.rint((centre[..., 1] - 5) / 10).astype(int)
  assert (videos == videos[..., :1]).all()
  return videos[..., 0], frames


def take(it, k):
  return [next(it) for _ in range(k)]


def train_clips(batch):
  """The train clips uint8 [B, T, S, S, 3] as the jitted step sees them."""
  return np.asarray(device_transforms.train_video(batch))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# --- Train --------------------------------------------------------------------------------------

def test_train_batches_and_tsn_frames(data_dir):
  batches = take(pipeline.make_train_iter(config(data_dir)), 3)
  for batch in batches:
    assert batch["video"].shape == (4, 4, *transforms.frame_slot([(HEIGHT, WIDTH)]), 3)
    assert batch["video"].dtype == np.uint8 and batch["label"].dtype == np.int32
    video = train_clips(batch)
    assert video.shape == (4, 4, 32, 32, 3) and video.dtype == np.uint8
    videos, frames = decode_codes(video)
    np.testing.assert_array_equal(videos, batch["label"])
    # d = 12 // 4 = 3: frame t comes from its segment [3t, 3t + 2].
    offsets = frames - 3 * np.arange(4)
    assert offsets.min() >= 0 and offsets.max() <= 2


def test_same_seed_same_batches_other_seed_differs(data_dir):
  a = take(pipeline.make_train_iter(config(data_dir, flip="flip"), seed=1), 3)
  b = take(pipeline.make_train_iter(config(data_dir, flip="flip"), seed=1), 3)
  c = take(pipeline.make_train_iter(config(data_dir, flip="flip"), seed=2), 3)
  assert_batches_equal(a, b)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_train_process_blocks_are_contiguous_disjoint_and_cover_each_epoch(data_dir,
                                                                           process_count):
  batch = 2 * process_count
  seen = []
  for p in range(process_count):
    it = pipeline.make_train_iter(config(data_dir, batch_size=batch), process_index=p,
                                  process_count=process_count)
    per_process = NUM_TRAIN // process_count
    labels = np.concatenate([b["label"] for b in take(it, per_process)])  # 2 clips per batch.
    # Two epochs of this process's block: each epoch is a permutation of the block, a
    # contiguous range of the split (the 2 shards of 6 videos are the blocks of 2 processes;
    # 3 processes cut the split by videos).
    first, second = labels[:per_process], labels[per_process:]
    block = list(range(NUM_TRAIN * p // process_count, NUM_TRAIN * (p + 1) // process_count))
    assert sorted(first) == sorted(second) == block
    seen.append(set(first))
  assert set().union(*seen) == set(range(NUM_TRAIN))
  assert sum(map(len, seen)) == NUM_TRAIN


def test_epochs_are_reshuffled(data_dir):
  labels = np.concatenate([b["label"] for b in take(pipeline.make_train_iter(config(data_dir)), 9)])
  epochs = labels.reshape(3, NUM_TRAIN)
  assert all(sorted(e) == list(range(NUM_TRAIN)) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3


def test_state_round_trip(data_dir):
  cfg = config(data_dir, flip="flip")
  original = pipeline.make_train_iter(cfg)
  take(original, 3)
  state = original.get_state()
  expected = take(original, 4)  # Crosses the epoch boundary (3 batches per epoch).
  restored = pipeline.make_train_iter(cfg)
  restored.set_state(state)
  assert_batches_equal(take(restored, 4), expected)


def test_orbax_checkpoint_round_trip(data_dir, tmp_path):
  cfg = config(data_dir, flip="flip")
  original = pipeline.make_train_iter(cfg)
  take(original, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(original)))
    manager.wait_until_finished()
  expected = take(original, 2)
  restored = pipeline.make_train_iter(cfg)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_batches_equal(take(restored, 2), expected)


@pytest.mark.parametrize("policy", ["flip", "flip_swap_labels"])
def test_flip_mirrors_pixels_and_swaps_listed_labels(data_dir, policy):
  swap = {2: 3, 3: 2, 5: 9, 9: 5}
  flips = 0
  for batch in take(pipeline.make_train_iter(config(data_dir, flip=policy)), 12):
    video = train_clips(batch)
    videos, _ = decode_codes(video)
    ramp = video[:, 0, 16, :, 2].astype(int)  # B along a row of the first frame.
    mirrored = ramp[:, 0] > ramp[:, -1]
    flips += mirrored.sum()
    for video, is_mirrored, label in zip(videos, mirrored, batch["label"]):
      if is_mirrored and policy == "flip_swap_labels":
        assert label == swap.get(video, video)
      else:
        assert label == video
  assert 12 <= flips <= 36  # p = .5 over 48 clips.


def test_dense_sampling_in_pipeline(data_dir):
  cfg = config(data_dir, sampling="dense", dense_stride=2)
  for batch in take(pipeline.make_train_iter(cfg), 2):
    _, frames = decode_codes(train_clips(batch))
    np.testing.assert_array_equal(frames - frames[:, :1], np.tile([0, 2, 4, 6], (4, 1)))
    assert frames[:, 0].max() <= NUM_FRAMES - 8


def test_batches_held_downstream_are_never_refilled(data_dir):
  # Batch arrays are reused once nobody references them; held ones (here: 6 of them, more than
  # the pipeline keeps in flight) must keep their pixels.
  it = pipeline.make_train_iter(config(data_dir, flip="flip"))
  held = take(it, 6)
  copies = [b["video"].copy() for b in held]
  take(it, 6)
  for batch, copy in zip(held, copies):
    np.testing.assert_array_equal(batch["video"], copy)
  assert len({id(b["video"]) for b in held}) == 6


def test_batch_larger_than_slice_is_rejected(data_dir):
  with pytest.raises(ValueError, match="fewer than one batch"):
    pipeline.make_train_iter(config(data_dir, batch_size=16))


# --- Eval ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_counts_every_video_once(data_dir, process_count):
  cfg = config(data_dir, eval_batch_size=2 * process_count)
  num_batches = pipeline.num_eval_batches(cfg, process_count=process_count)
  assert num_batches == -(-(-(-NUM_VAL // process_count)) // 2)
  indices = []
  for p in range(process_count):
    batches = list(pipeline.make_eval_iter(cfg, process_index=p, process_count=process_count))
    assert len(batches) == num_batches
    for batch in batches:
      videos, frames = decode_codes(batch["video"][:, 0])
      mask = batch["mask"]
      np.testing.assert_array_equal(batch["index"][mask], videos[mask])
      np.testing.assert_array_equal(batch["label"][mask], videos[mask])
      assert (batch["index"][~mask] == -1).all() and (batch["video"][~mask] == 0).all()
      for index, clip in zip(batch["index"][mask], frames[mask]):
        n = NUM_FRAMES if index < NUM_VAL - 1 else 3
        np.testing.assert_array_equal(clip, [int(n / 8 + t * n / 4) for t in range(4)])
      indices.extend(batch["index"][mask].tolist())
  assert sorted(indices) == list(range(NUM_VAL))


def test_eval_multi_view(data_dir):
  cfg = config(data_dir, test_clip_sampling="uniform")
  batch = next(pipeline.make_eval_iter(cfg, clips=2, crops=3))
  assert batch["video"].shape == (4, 6, 4, 32, 32, 3)
  _, frames = decode_codes(batch["video"])
  # View v = clip * crops + crop; n = 12, T = 4, tick 3: clip 0 centres, clip 1 segment starts.
  np.testing.assert_array_equal(frames[:, :3], np.broadcast_to([1, 4, 7, 10], (4, 3, 4)))
  np.testing.assert_array_equal(frames[:, 3:], np.broadcast_to([0, 3, 6, 9], (4, 3, 4)))
  ramp = batch["video"][0, :3, 0, 16, 0, 2].astype(int)  # Left column of left/right/centre.
  assert ramp[0] < ramp[2] < ramp[1]


def test_eval_random_clips_depend_only_on_the_record(data_dir):
  cfg = config(data_dir, test_clip_sampling="random", eval_batch_size=2)
  one = [b for b in pipeline.make_eval_iter(cfg, clips=3)]
  two = [b for p in range(2) for b in pipeline.make_eval_iter(cfg, clips=3, process_index=p,
                                                                  process_count=2)]
  def by_index(batches):
    return {int(i): v for b in batches for i, v, m in zip(b["index"], b["video"], b["mask"]) if m}
  a, b = by_index(one), by_index(two)
  assert a.keys() == b.keys() == set(range(NUM_VAL))
  for i in a:
    np.testing.assert_array_equal(a[i], b[i])
  _, frames = decode_codes(a[0])
  assert len({tuple(f) for f in frames}) > 1
  assert ((frames - 3 * np.arange(4)) >= 0).all() and ((frames - 3 * np.arange(4)) <= 2).all()


# --- Bad records --------------------------------------------------------------------------------

def test_corrupt_jpeg_names_dir_split_record_video_and_frame(tmp_path):
  # Train video 4 is corrupt in every frame; validation video 1 only in frame 4, which the
  # centre sampling (frames 1, 4, 7, 10) reads.
  train = [make_record(v, bad_frames=range(NUM_FRAMES) if v == 4 else ()) for v in range(5)]
  path = write_dataset(tmp_path / "bad", train, [make_record(0), make_record(1, bad_frames=(4,))])
  with pytest.raises(ValueError) as err:
    list(pipeline.make_eval_iter(config(path)))
  message = str(err.value)
  for part in (path, "split 'validation'", "record 1", "vid001", "frame 4"):
    assert part in message
  with pytest.raises(ValueError, match=r"split 'train' record 4 \(video_id 'vid004'\) frame"):
    take(pipeline.make_train_iter(config(path, batch_size=1)), 5)


def test_worker_processes_give_the_thread_stream_and_resume(data_dir):
  cfg = config(data_dir, flip="flip")
  threads = take(pipeline.make_train_iter(cfg), 3)
  cfg.num_workers = 1
  workers = pipeline.make_train_iter(cfg)
  assert_batches_equal(take(workers, 1), threads[:1])
  state = workers.get_state()
  restored = pipeline.make_train_iter(cfg)
  restored.set_state(state)
  assert_batches_equal(take(restored, 2), threads[1:])

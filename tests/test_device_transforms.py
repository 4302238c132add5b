"""Train crop/resize/flip on device against the host's cv2 reference (`transforms.crop_resize`)."""

import jax
import numpy as np
import pytest

from data_pipelines import device_transforms
from data_pipelines import transforms

SCALES = (1, .875, .75, .66)


def noise_frames(rng, height, width, num_frames=2):
  return [np.clip(rng.normal(128, 60, (height, width, 3)), 0, 255).astype(np.uint8)
          for _ in range(num_frames)]


def to_device(frames_per_clip, boxes, flips, size):
  """Host side of the pipeline for given boxes: flat frame slots, widths and taps."""
  slot = transforms.frame_slot([f[0].shape[:2] for f in frames_per_clip])
  video = np.full((len(boxes), len(frames_per_clip[0]), *slot, 3), 77, np.uint8)
  taps = []
  for b, (frames, (y, x, h, w), flip) in enumerate(zip(frames_per_clip, boxes, flips)):
    transforms.store_flat(frames, video[b])
    taps.append(np.stack([transforms.resize_taps(h, size, offset=y),
                          transforms.resize_taps(w, size, flip, offset=x)]))
  width = np.array([f[0].shape[1] for f in frames_per_clip], np.int32)
  return video, width, np.stack(taps)


def test_matches_cv2_on_every_multiscale_box_and_mixed_frame_sizes():
  rng = np.random.default_rng(0)
  size = 56
  sizes = [(64, 85), (64, 64), (72, 64), (60, 100)]  # Landscape, square, portrait, another width.
  clips, boxes, flips, want = [], [], [], []
  for height, width in sizes:
    for (h, w), offset in zip(transforms.multiscale_sizes(height, width, size, SCALES),
                              transforms.fixed_offsets(height, width, 48, 48) * 2):
      y = min(offset[0], height - h)
      x = min(offset[1], width - w)
      flip = bool(rng.random() < 0.5)
      frames = noise_frames(rng, height, width)
      clips.append(frames)
      boxes.append((y, x, h, w))
      flips.append(flip)
      want.append(transforms.crop_resize(frames, (y, x, h, w), size, flip))
  got = np.asarray(jax.jit(device_transforms.crop_resize)(*to_device(clips, boxes, flips, size)))
  diff = np.abs(got.astype(int) - np.stack(want))
  # cv2 rounds its 11-bit fixed-point weights; the device blends in float32.
  assert diff.max() <= 1 and diff.mean() < 0.2


def test_box_at_output_size_is_an_exact_cut_and_flip_an_exact_mirror():
  rng = np.random.default_rng(1)
  frames = noise_frames(rng, 40, 50, num_frames=3)
  box = (5, 9, 32, 32)
  video, width, taps = to_device([frames, frames], [box, box], [False, True], 32)
  got = np.asarray(device_transforms.crop_resize(video, width, taps))
  want = np.stack([f[5:37, 9:41] for f in frames])
  np.testing.assert_array_equal(got[0], want)
  np.testing.assert_array_equal(got[1], want[:, :, ::-1])


def test_store_flat_layout_and_zero_tail():
  frames = noise_frames(np.random.default_rng(2), 3, 4)
  slot = transforms.frame_slot([(3, 4), (2, 7)])
  assert slot == (2 + 1, 7)  # max(h * w) = 14 pixels: 2 rows of 7, plus a spare row.
  out = np.full((2, *slot, 3), 9, np.uint8)
  transforms.store_flat(frames, out)
  flat = out.reshape(2, -1)
  for t in range(2):
    np.testing.assert_array_equal(flat[t, :36], frames[t].reshape(-1))
    assert (flat[t, 36:] == 0).all()


def test_batches_without_taps_pass_through():
  video = np.zeros((2, 3, 8, 8, 3), np.uint8)
  assert device_transforms.train_video(dict(video=video, label=np.zeros(2))) is video


@pytest.mark.parametrize("length,size", [(168, 224), (256, 224), (224, 224), (3, 5)])
def test_resize_taps_sample_cv2_positions(length, size):
  taps = transforms.resize_taps(length, size)
  pos = (np.arange(size) + 0.5) * length / size - 0.5
  blended = taps[:, 0] * (1 - taps[:, 2]) + taps[:, 1] * taps[:, 2]
  np.testing.assert_allclose(blended, np.clip(pos, 0, length - 1), atol=1e-4)
  assert taps[:, :2].min() >= 0 and taps[:, :2].max() <= length - 1

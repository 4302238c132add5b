"""Frame index sampling against the TSN/GSF formulas, written out independently here."""

from fractions import Fraction

import numpy as np
import pytest

from data_pipelines import sampling

CASES = [(n, t) for n in (1, 2, 3, 5, 7, 8, 12, 13, 31, 40, 97, 120) for t in (1, 3, 4, 8, 16)]


def centres_reference(n, t_total):
  """GSF `_get_val_indices`, 0-based: int(tick/2 + tick*t) with tick = n/T."""
  tick = n / float(t_total)
  return [int(tick / 2.0 + tick * t) for t in range(t_total)]


@pytest.mark.parametrize("n,num_frames", CASES)
def test_tsn_train_stays_in_its_segment_and_covers_it(n, num_frames):
  rng = np.random.default_rng(0)
  draws = np.stack([sampling.tsn_train(n, num_frames, rng) for _ in range(300)])
  d = n // num_frames
  if d == 0:
    # n < T: the reference repeats frames at the segment centres.
    assert (draws == centres_reference(n, num_frames)).all()
    return
  offsets = draws - d * np.arange(num_frames)
  assert offsets.min() >= 0 and offsets.max() <= d - 1
  if d <= 4:  # Every offset of every segment shows up in 300 draws.
    for t in range(num_frames):
      assert set(offsets[:, t]) == set(range(d))


def test_tsn_train_is_random_and_seeded():
  a = sampling.tsn_train(100, 8, np.random.default_rng(1))
  b = sampling.tsn_train(100, 8, np.random.default_rng(1))
  c = sampling.tsn_train(100, 8, np.random.default_rng(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("n,num_frames", CASES)
def test_one_clip_is_segment_centres(n, num_frames):
  np.testing.assert_array_equal(sampling.tsn_clips(n, num_frames, 1)[0],
                                centres_reference(n, num_frames))


@pytest.mark.parametrize("n,num_frames", CASES)
def test_two_clips_are_gsf_test_clips(n, num_frames):
  tick = n / float(num_frames)
  gsf = [[int(tick * t) for t in range(num_frames)],
         [int(tick * t + tick / 2.0) for t in range(num_frames)]]
  clips = sampling.tsn_clips(n, num_frames, 2)
  assert sorted(map(list, clips)) == sorted(gsf)


@pytest.mark.parametrize("n,num_frames", CASES)
@pytest.mark.parametrize("num_clips", [3, 5, 10])
def test_k_clips_shift_the_centre_grid_by_k_over_k(n, num_frames, num_clips):
  clips = sampling.tsn_clips(n, num_frames, num_clips)
  tick = n / float(num_frames)
  for k in range(num_clips):
    shift = (Fraction(1, 2) + Fraction(k, num_clips)) % 1
    # The reference's float expression, extended to any shift ...
    np.testing.assert_array_equal(
      clips[k], [int(tick * float(shift) + tick * t) for t in range(num_frames)])
    # ... which is the exact position except just below an integer boundary.
    exact = [Fraction(n, num_frames) * (t + shift) for t in range(num_frames)]
    for got, want in zip(clips[k], exact):
      assert got == int(want) or (want.denominator == 1 and got == want - 1)
  assert clips.min() >= 0 and clips.max() < n


def test_random_clips_are_independent_train_draws():
  rng = np.random.default_rng(3)
  clips = sampling.tsn_random_clips(80, 8, 10, rng)
  assert clips.shape == (10, 8)
  offsets = clips - 10 * np.arange(8)
  assert offsets.min() >= 0 and offsets.max() <= 9
  assert len({tuple(c) for c in clips}) == 10


@pytest.mark.parametrize("n", [1, 5, 20, 63, 64, 65, 200])
def test_dense_train_is_a_strided_window(n):
  t_total, stride = 8, 8
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(200):
    idx = sampling.dense_train(n, t_total, stride, rng)
    start = int(idx[0])
    np.testing.assert_array_equal(idx, [(start + stride * t) % n for t in range(t_total)])
    starts.add(start)
  positions = max(1, n - t_total * stride + 1)
  assert max(starts) < positions
  if positions <= 20:
    assert starts == set(range(positions))


def test_dense_clips():
  # n = 200, window 64: starts 0..136.
  one = sampling.dense_clips(200, 8, 8, 1)
  np.testing.assert_array_equal(one[0], 68 + 8 * np.arange(8))
  ten = sampling.dense_clips(200, 8, 8, 10)
  np.testing.assert_array_equal(ten[:, 0], [int(136 * k / 9) for k in range(10)])
  np.testing.assert_array_equal(ten - ten[:, :1], np.tile(8 * np.arange(8), (10, 1)))
  # Shorter than the window: one start, wrapped.
  np.testing.assert_array_equal(sampling.dense_clips(20, 8, 8, 3)[2], (8 * np.arange(8)) % 20)


def test_dispatch_and_errors():
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(
    sampling.eval_indices(12, 4, 1), [centres_reference(12, 4)])
  assert sampling.eval_indices(40, 4, 10, clip_sampling="random", rng=rng).shape == (10, 4)
  assert sampling.train_indices(40, 4, rng, sampling="dense", dense_stride=2).shape == (4,)
  with pytest.raises(ValueError, match="sampling"):
    sampling.train_indices(40, 4, rng, sampling="sparse")
  with pytest.raises(ValueError, match="clip_sampling"):
    sampling.eval_indices(40, 4, 2, clip_sampling="jitter")
  with pytest.raises(ValueError, match="needs an rng"):
    sampling.eval_indices(40, 4, 2, clip_sampling="random")
  with pytest.raises(ValueError, match="0 frames"):
    sampling.tsn_train(0, 4, rng)

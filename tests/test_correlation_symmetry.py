"""The correlation volume treats the two image axes alike.

Displacements are flattened row-major, k = (dy + D) * (2D + 1) + (dx + D), so the last axis
reshapes to a [dy, dx] grid. Then, for every implementation:
  * a transposed clip (H <-> W) gives the transposed volume with dy and dx exchanged;
  * a clip turned by 90 degrees gives the turned volume with (dy, dx) -> (dx, -dy), i.e. the
    displacement grid turned the same way;
  * a vertically flipped clip gives the flipped volume with dy negated (horizontal: dx negated).
"""

import functools

import jax
import numpy as np
import pytest

from fstfl_jax.models import correlation

D = 2
OFFSETS = (0, 1, 2)
IMPLS = ("loop", "allpairs", "banded", "einsum")


@functools.cache
def _correlate(impl, shape):
  fn = functools.partial(correlation.correlate, max_disp=D, offsets=OFFSETS, impl=impl)
  return jax.jit(fn).lower(jax.ShapeDtypeStruct(shape, np.float32)).compile()


def volume(x, impl):
  """x [B, T, H, W, C] -> float64 [B, T, H, W, L, dy, dx]."""
  s = np.asarray(_correlate(impl, x.shape)(x), np.float64)
  return s.reshape(s.shape[:-1] + (2 * D + 1, 2 * D + 1))


def clip(h, w, seed=0):
  return np.random.default_rng(seed).normal(size=(2, 4, h, w, 6)).astype(np.float32)


def test_displacement_order_is_row_major_dy_outer():
  """A pattern moving down by one row between frames peaks at (dy, dx) = (+1, 0) for l = 1."""
  x = np.zeros((1, 2, 7, 7, 3), np.float32)
  rng = np.random.default_rng(1)
  x[0, 0] = rng.normal(size=(7, 7, 3))
  x[0, 1, 1:] = x[0, 0, :-1]  # Frame 1 = frame 0 shifted down by one row.
  s = volume(x, "loop")[0, 0, 3, 3, OFFSETS.index(1)]
  assert np.unravel_index(np.argmax(s), s.shape) == (D + 1, D)
  k = (1 + D) * (2 * D + 1) + (0 + D)
  np.testing.assert_allclose(s.reshape(-1)[k], 1.0, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_transpose_exchanges_dy_and_dx(impl):
  x = clip(5, 7)
  got = volume(np.swapaxes(x, 2, 3), impl)
  want = np.swapaxes(np.swapaxes(volume(x, impl), 2, 3), -2, -1)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_rot90_turns_the_displacement_grid(impl):
  x = clip(6, 6, seed=2)
  s = volume(x, impl)
  got = volume(np.rot90(x, 1, axes=(2, 3)), impl)
  # S'[i, j, dy, dx] = S[j, N-1-i, dx, -dy]: both the map and the grid turn counter-clockwise.
  want = np.rot90(np.rot90(s, 1, axes=(2, 3)), 1, axes=(-2, -1))
  np.testing.assert_allclose(got, want, atol=1e-5)
  i, j, dy, dx = 1, 4, -2, 1  # One entry spelled out.
  np.testing.assert_allclose(got[..., i, j, :, D + dy, D + dx],
                             s[..., j, 6 - 1 - i, :, D + dx, D - dy], atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_vertical_flip_negates_dy_horizontal_flip_negates_dx(impl):
  x = clip(5, 7, seed=3)
  s = volume(x, impl)
  np.testing.assert_allclose(volume(x[:, :, ::-1], impl), s[:, :, ::-1, :, :, ::-1, :],
                             atol=1e-5)
  np.testing.assert_allclose(volume(x[:, :, :, ::-1], impl), s[:, :, :, ::-1, :, :, ::-1],
                             atol=1e-5)
  # Not trivially symmetric: negating dx instead of dy would not match a vertical flip.
  assert np.abs(volume(x[:, :, ::-1], impl) - s[:, :, ::-1, :, :, :, ::-1]).max() > 0.1

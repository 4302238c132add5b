"""Correlation kernels: every implementation against the plain loop, the loop against numpy."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fstfl_jax.models import correlation

SHAPE = (2, 4, 5, 6, 8)  # [B, T, H, W, C]
FAST_IMPLS = ("einsum", "allpairs", "banded")
ALL_IMPLS = ("loop",) + FAST_IMPLS

# D=3 exceeds H/2 and W/2. Each D meets every offset set or boundary mode at least once; the
# list stays short because the unrolled loop and einsum graphs take seconds each to compile.
CASES = [
  (1, (0, 1, 2, 3), "zero"),
  (1, (-2, 0, 1), "clamp"),
  (2, (0,), "circular"),
  (2, (-2, 0, 1), "zero"),
  (2, (0, 1, 2, 3), "clamp"),
  (3, (-2, 0, 1), "circular"),
  (3, (0,), "zero"),
]
WIDEST_CIRCULAR = CASES[5]

# Unoptimised XLA:CPU codegen: these graphs are tiny, compiling them dominates the test time.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _case_id(case):
  d, offsets, boundary = case
  return f"D{d}-l{'_'.join(map(str, offsets))}-{boundary}"


@functools.cache
def _volume_and_grad(impl, case, dtype=jnp.float32, valid_pairs_only=None, remat=None):
  """Compiled x, r -> (S, d<S, r>/dx): the values and the gradient of a linear functional.

  By default "loop" is the oracle form (every pair against zero frames, no remat) and the fast
  implementations run as the model calls them (valid pairs only, remat).
  """
  d, offsets, boundary = case
  if remat is None:
    remat = impl != "loop"
  if valid_pairs_only is None:
    valid_pairs_only = impl != "loop"

  def fn(x, r):
    volume, vjp = jax.vjp(functools.partial(
      correlation.correlate, max_disp=d, offsets=offsets, boundary=boundary, impl=impl,
      valid_pairs_only=valid_pairs_only, remat=remat), x)
    return volume, vjp(r)[0]

  args = (jax.ShapeDtypeStruct(SHAPE, dtype), jax.ShapeDtypeStruct(_volume_shape(d, offsets),
                                                                   jnp.float32))
  return jax.jit(fn).lower(*args).compile(_FAST_COMPILE)


def _volume_shape(max_disp, offsets):
  return SHAPE[:4] + (len(offsets), (2 * max_disp + 1) ** 2)


def _inputs(seed=0):
  kx, kr = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, SHAPE, jnp.float32)
  return x, kr


def _cotangent(key, max_disp, offsets):
  return jax.random.normal(key, _volume_shape(max_disp, offsets), jnp.float32)


@functools.cache
def _oracle(case):
  """The reference: Python loop, every pair against zero frames, no remat."""
  d, offsets, boundary = case
  x, kr = _inputs()
  return jax.device_get(_volume_and_grad("loop", case)(x, _cotangent(kr, d, offsets)))


def _brute_force(x, max_disp, offsets, boundary, eps=1e-6):
  """S from the definition, one scalar dot product per entry."""
  x = np.asarray(x, np.float64)
  batch, frames, height, width, _ = x.shape
  xn = x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)
  span = range(-max_disp, max_disp + 1)
  out = np.zeros(x.shape[:4] + (len(offsets), len(span) ** 2))
  for b, t, i, j in np.ndindex(batch, frames, height, width):
    for l, offset in enumerate(offsets):
      partner = t + offset
      if boundary == "clamp":
        partner = min(max(partner, 0), frames - 1)
      elif boundary == "circular":
        partner %= frames
      elif not 0 <= partner < frames:
        continue
      for k, (dy, dx) in enumerate(itertools.product(span, span)):
        if 0 <= i + dy < height and 0 <= j + dx < width:
          out[b, t, i, j, l, k] = xn[b, t, i, j] @ xn[b, partner, i + dy, j + dx]
  return out


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=_case_id)
def test_loop_matches_brute_force(case):
  d, offsets, boundary = case
  x, _ = _inputs()
  volume, _ = _oracle(case)
  np.testing.assert_allclose(volume, _brute_force(x, d, offsets, boundary), atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_impl_matches_loop(case, impl):
  d, offsets, _ = case
  x, kr = _inputs()
  volume, grad = _volume_and_grad(impl, case)(x, _cotangent(kr, d, offsets))
  want_volume, want_grad = _oracle(case)
  assert volume.dtype == jnp.float32
  np.testing.assert_allclose(volume, want_volume, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, atol=1e-4, rtol=1e-4)


def test_auto_matches_loop():
  d, offsets, boundary = case = CASES[4]
  x, _ = _inputs()
  volume = jax.jit(functools.partial(correlation.correlate, max_disp=d, offsets=offsets,
                                     boundary=boundary, impl="auto"))(x)
  assert correlation.resolve_impl("auto") in correlation.IMPLS
  np.testing.assert_allclose(volume, _oracle(case)[0], atol=1e-5)


@pytest.mark.parametrize("impl", ("allpairs", "banded"))
def test_without_remat(impl):
  d, offsets, _ = case = CASES[4]
  x, kr = _inputs()
  volume, grad = _volume_and_grad(impl, case, remat=False)(x, _cotangent(kr, d, offsets))
  want_volume, want_grad = _oracle(case)
  np.testing.assert_allclose(volume, want_volume, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ("loop", "allpairs", "banded"))
def test_valid_pairs_only_equals_all_pairs(impl):
  d, offsets, boundary = case = CASES[3]
  assert boundary == "zero" and offsets == (-2, 0, 1)
  x, kr = _inputs(seed=1)
  r = _cotangent(kr, d, offsets)
  volume, grad = _volume_and_grad(impl, case, valid_pairs_only=True)(x, r)
  want_volume, want_grad = _volume_and_grad(impl, case, valid_pairs_only=False)(x, r)
  np.testing.assert_allclose(volume, want_volume, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, atol=1e-5)
  # The skipped pairs really are zero: frame t has no partner t-2 for t < 2, nor t+1 at t = T-1.
  assert not np.any(np.asarray(volume)[:, :2, :, :, 0])
  assert not np.any(np.asarray(volume)[:, -1, :, :, 2])


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_no_cross_clip_leakage(impl):
  # Circular time and a window wider than the frame: the widest reach a bug could exploit.
  d, offsets, _ = WIDEST_CIRCULAR
  x, kr = _inputs()
  r = _cotangent(kr, d, offsets)
  fn = _volume_and_grad(impl, WIDEST_CIRCULAR)
  perturbed = x.at[1].add(jax.random.normal(jax.random.key(7), SHAPE[1:]))
  volume, _ = fn(x, r)
  volume_perturbed, _ = fn(perturbed, r)
  np.testing.assert_array_equal(volume_perturbed[0], volume[0])
  assert np.abs(np.asarray(volume_perturbed[1]) - np.asarray(volume[1])).max() > 0.1
  # Gradient flows only within a clip: a functional of clip 0's volume ignores clip 1's input.
  _, grad = fn(x, r.at[1].set(0.0))
  assert not np.any(np.asarray(grad[1]))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_self_similarity_and_zero_vectors(impl):
  d, offsets, _ = case = CASES[3]
  l0, k0 = offsets.index(0), (2 * d + 1) ** 2 // 2
  x, kr = _inputs()
  x = x.at[0, 1, 2, 3].set(0.0).at[1, 3, 0, 5].set(0.0)
  volume, grad = _volume_and_grad(impl, case)(x, _cotangent(kr, d, offsets))
  self_sim = np.asarray(volume[..., l0, k0])
  zero = np.zeros(SHAPE[:4], bool)
  zero[0, 1, 2, 3] = zero[1, 3, 0, 5] = True
  np.testing.assert_allclose(self_sim[~zero], 1.0, atol=1e-5)
  assert np.all(self_sim[zero] == 0.0)
  # A zero vector is similar to nothing (its whole row of the volume is exactly 0).
  assert not np.any(np.asarray(volume)[0, 1, 2, 3])
  assert np.all(np.isfinite(grad))
  assert np.all(np.isfinite(grad[0, 1, 2, 3]))


def test_l2_normalize_zero_vector_gradient():
  x = jnp.zeros((3, 4)).at[0].set(jnp.array([3.0, 4.0, 0.0, 0.0]))
  grad = jax.grad(lambda v: jnp.sum(correlation.l2_normalize(v) * jnp.arange(4.0)))(x)
  np.testing.assert_allclose(correlation.l2_normalize(x)[0], [0.6, 0.8, 0, 0], atol=1e-6)
  assert np.all(np.isfinite(grad))
  # At 0 the map is x / sqrt(eps): a finite, non-zero slope.
  np.testing.assert_allclose(grad[1], np.arange(4.0) / np.sqrt(1e-6), rtol=1e-4)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_bfloat16_input(impl):
  d, offsets, _ = case = CASES[0]
  x, kr = _inputs()
  volume, grad = _volume_and_grad(impl, case, jnp.bfloat16)(x.astype(jnp.bfloat16),
                                                           _cotangent(kr, d, offsets))
  assert volume.dtype == jnp.float32
  assert np.all(np.isfinite(volume)) and np.all(np.isfinite(grad.astype(jnp.float32)))
  np.testing.assert_allclose(volume, _oracle(case)[0], atol=3e-2)


@pytest.mark.parametrize("boundary", correlation.BOUNDARIES)
def test_temporal_validity(boundary):
  offsets = (-2, 0, 1, 3)
  mask = correlation.temporal_validity(5, offsets, boundary)
  assert mask.shape == (5, 4) and mask.dtype == np.float32
  for t, (l, offset) in itertools.product(range(5), enumerate(offsets)):
    assert mask[t, l] == float(0 <= t + offset < 5)


def test_bad_arguments():
  x = jnp.ones(SHAPE)
  with pytest.raises(ValueError, match="impl"):
    correlation.correlate(x, max_disp=1, offsets=(0,), impl="fft")
  with pytest.raises(ValueError, match="boundary"):
    correlation.correlate(x, max_disp=1, offsets=(0,), boundary="reflect")
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    correlation.correlate(x[0], max_disp=1, offsets=(0,))
  with pytest.raises(ValueError, match="boundary"):
    correlation.temporal_validity(4, (0, 1), "wrap")

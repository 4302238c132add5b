"""GSF against an explicit NumPy rendering of the reference (docs/gsf.md) in PyTorch layout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fstfl_jax.models import gsf as gsf_lib
from fstfl_jax.models import layers
from fstfl_jax.models.resnet import Bottleneck


def _conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Zero-padded stride-1 cross-correlation. x [Cin, *S], w [Cout, Cin, *K] -> [Cout, *S]."""
  k = w.shape[2:]
  pad = [(0, 0)] + [(kk // 2, kk // 2) for kk in k]
  xp = np.pad(x, pad)
  out = np.zeros((w.shape[0],) + x.shape[1:])
  for idx in np.ndindex(*k):
    window = xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(idx, x.shape[1:]))]
    out += np.einsum("i...,oi->o...", window, w[(slice(None), slice(None)) + idx])
  return out + b.reshape((-1,) + (1,) * len(k))


def gsf_reference(x_nchw: np.ndarray, t: int, c_g: int, p: dict, stats: dict) -> np.ndarray:
  """GSF forward (eval-mode BN3d) written from docs/gsf.md, tensors as the reference holds them."""
  n, c, h, w = x_nchw.shape
  b = n // t
  half, q = c_g // 2, c_g // 4
  xg = x_nchw[:, :c_g].reshape(b, t, c_g, h, w).transpose(0, 2, 1, 3, 4)  # (B, C_g, T, H, W)
  bn = p["bn3d"]
  mean, var = stats["bn3d"]["mean"], stats["bn3d"]["var"]
  u = (xg - mean[:, None, None, None]) / np.sqrt(var[:, None, None, None] + 1e-5)
  u = np.maximum(u * bn["scale"][:, None, None, None] + bn["bias"][:, None, None, None], 0)
  # conv3d: groups=2, 2 output channels; our kernel is [kt, kh, kw, C_g/2, 2].
  k3 = np.asarray(p["conv3d"]["kernel"]).transpose(4, 3, 0, 1, 2)  # (2, C_g/2, 3, 3, 3)
  out = np.zeros((b, c_g, t, h, w))
  for bi in range(b):
    gate = np.stack([
      _conv_same(u[bi, g * half:(g + 1) * half], k3[g:g + 1], p["conv3d"]["bias"][g:g + 1])[0]
      for g in range(2)])
    gate = np.tanh(gate)  # (2, T, H, W)
    for k in range(2):
      xk = xg[bi, k * half:(k + 1) * half]  # (C/2, T, H, W)
      yk = gate[k][None] * xk
      rk = xk - yk
      sk = np.zeros_like(yk)
      if k == 0:
        sk[:, :-1] = yk[:, 1:]  # frame t <- t+1
      else:
        sk[:, 1:] = yk[:, :-1]  # frame t <- t-1
      desc = np.stack([sk.mean((2, 3)), rk.mean((2, 3))])  # (2, C/2, T)
      kc = np.asarray(p[f"channel_conv{k + 1}"]["kernel"]).transpose(3, 2, 0, 1)  # (1,2,3,3)
      wk = 1 / (1 + np.exp(-_conv_same(desc, kc, p[f"channel_conv{k + 1}"]["bias"])[0]))
      zk = wk[:, :, None, None] * sk + (1 - wk[:, :, None, None]) * rk
      for j in range(q):
        for hh in range(2):
          out[bi, k * half + 2 * j + hh] = zk[hh * q + j]
  gated = out.transpose(0, 2, 1, 3, 4).reshape(n, c_g, h, w)
  return np.concatenate([gated, x_nchw[:, c_g:]], axis=1)


@pytest.mark.parametrize("channels,ratio,t", [(16, 50, 4), (32, 25, 3), (8, 100, 5)])
def test_gsf_matches_numpy_reference(channels, ratio, t):
  b, h, w = 2, 3, 4
  key = jax.random.key(channels + t)
  x = jax.random.normal(key, (b * t, h, w, channels))
  c_g = gsf_lib.gated_channels(channels, ratio)
  order = gsf_lib.interleave_order(c_g)
  # The module takes the gated channels in its output order (conv3 emits them that way).
  xg = x[..., :c_g][..., order]
  module = gsf_lib.GSF(num_frames=t, ratio=ratio)
  variables = module.init(jax.random.key(1), xg, train=False)
  # Non-trivial BN statistics so that the gate path is really exercised.
  rng = np.random.default_rng(0)
  stats = {"bn3d": {"mean": rng.normal(size=c_g).astype(np.float32),
                    "var": rng.uniform(0.5, 2, size=c_g).astype(np.float32)}}
  params = jax.tree.map(np.asarray, variables["params"])
  params["bn3d"] = {"scale": rng.uniform(0.5, 1.5, c_g).astype(np.float32),
                    "bias": rng.normal(size=c_g).astype(np.float32)}
  got = module.apply({"params": params, "batch_stats": stats}, xg, train=False)
  want = gsf_reference(np.asarray(x, np.float64).transpose(0, 3, 1, 2), t, c_g, params, stats)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want[:, :c_g], atol=2e-5,
                             rtol=1e-4)


def test_gsf_param_count_is_29cg_plus_40():
  for channels in (256, 512, 1024, 2048):
    c_g = gsf_lib.gated_channels(channels, 25)
    module = gsf_lib.GSF(num_frames=2, ratio=25)
    shapes = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((2, 2, 2, c_g)), train=False))
    assert sum(v.size for v in jax.tree.leaves(shapes["params"])) == 29 * c_g + 40


def test_gsf_never_mixes_clips():
  t = 4
  module = gsf_lib.GSF(num_frames=t, ratio=50)
  x = jax.random.normal(jax.random.key(3), (2 * t, 3, 3, 8))
  variables = module.init(jax.random.key(1), x, train=False)
  y0 = module.apply(variables, x, train=False)
  y1 = module.apply(variables, x.at[t:].add(5.0), train=False)  # Perturb clip 1 only.
  np.testing.assert_array_equal(np.asarray(y0[:t]), np.asarray(y1[:t]))
  assert not np.allclose(np.asarray(y0[t:]), np.asarray(y1[t:]))


def test_gated_channels_rounding_and_errors():
  assert gsf_lib.gated_channels(256, 25) == 64
  assert gsf_lib.gated_channels(2048, 100) == 2048
  with pytest.raises(ValueError, match="multiple of 4"):
    gsf_lib.gated_channels(24, 25)  # 6 gated channels cannot be re-interleaved.


def test_interleave_order():
  np.testing.assert_array_equal(gsf_lib.interleave_order(8), [0, 2, 1, 3, 4, 6, 5, 7])
  np.testing.assert_array_equal(gsf_lib.interleave_order(16)[:8], [0, 4, 1, 5, 2, 6, 3, 7])


def test_shift_frames_stays_within_clips():
  y = jnp.arange(6.0).reshape(6, 1)  # Two clips of three frames: rows 0-2 and 3-5.
  np.testing.assert_array_equal(np.asarray(gsf_lib.shift_frames(y, 3, 1))[:, 0],
                                [1, 2, 0, 4, 5, 0])
  np.testing.assert_array_equal(np.asarray(gsf_lib.shift_frames(y, 3, -1))[:, 0],
                                [0, 0, 1, 0, 3, 4])


def test_bottleneck_with_gsf_matches_reference_composition():
  """conv3 -> reference GSF on all channels (slice, re-interleave, concat) -> bn3 -> residual.

  The bottleneck never builds the reference's intermediate tensors (conv3 emits the gated
  channels in output order, bn3 takes pieces): this checks that the shortcut is exact.
  """
  t, planes = 2, 8
  norm = functools.partial(layers.BatchNorm, group_rows=0)
  block = Bottleneck(planes, 1, conv=layers.conv, norm=norm,
                     gsf=functools.partial(gsf_lib.GSF, num_frames=t, ratio=25, norm=norm))
  x = jax.random.normal(jax.random.key(0), (2 * t, 4, 5, 4 * planes))
  variables = block.init(jax.random.key(1), x, train=False)
  rng = np.random.default_rng(1)
  stats = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                       variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  got, inter = block.apply(variables, x, train=False, capture_intermediates=True)
  y2 = np.maximum(np.asarray(inter["intermediates"]["bn2"]["__call__"][0], np.float64), 0)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  y3 = np.einsum("nhwi,io->nhwo", y2, p["conv3"]["kernel"][0, 0])
  c_g = gsf_lib.gated_channels(4 * planes, 25)
  g = gsf_reference(y3.transpose(0, 3, 1, 2), t, c_g, p["gsf"], stats["gsf"]).transpose(0, 2, 3, 1)
  bn3 = stats["bn3"]
  y = (g - bn3["mean"]) / np.sqrt(bn3["var"] + 1e-5) * p["bn3"]["scale"] + p["bn3"]["bias"]
  want = np.maximum(y + np.asarray(x, np.float64), 0)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)

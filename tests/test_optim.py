"""Optimiser: schedule vs the reference formula, weight-decay mask, clipping, update rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import recipe
from fstfl_jax.training import optim

STEPS_PER_EPOCH = 7


def reference_lr(epoch: int, base: float = 0.01) -> float:
  """GSF main.py's adjust_learning_rate, docs/training.md#recipe (warm-up 10, cosine to 60)."""
  if epoch < 10:
    return base * (0.1 + 0.9 * epoch / 10)
  return base * (1e-7 + (1 - 1e-7) * (1 + math.cos(math.pi * (epoch - 10) / 50)) / 2)


@pytest.mark.parametrize("stepped", [False, True])
def test_schedule_matches_reference_at_epoch_boundaries(stepped):
  cfg = recipe.optim_config()
  cfg.stepped_per_epoch = stepped
  schedule = optim.make_schedule(cfg, STEPS_PER_EPOCH, global_batch=32)
  got = [float(schedule(e * STEPS_PER_EPOCH)) for e in range(60)]
  np.testing.assert_allclose(got, [reference_lr(e) for e in range(60)], rtol=1e-5)
  assert got[0] == pytest.approx(0.001) and got[10] == pytest.approx(0.01)
  # Inside epoch 3: constant when stepped, strictly between the boundaries otherwise.
  mid = float(schedule(3 * STEPS_PER_EPOCH + 3))
  if stepped:
    assert mid == pytest.approx(reference_lr(3))
  else:
    assert reference_lr(3) < mid < reference_lr(4)


def test_lr_scales_linearly_with_global_batch():
  cfg = recipe.optim_config()
  schedule = optim.make_schedule(cfg, STEPS_PER_EPOCH, global_batch=256)
  assert float(schedule(10 * STEPS_PER_EPOCH)) == pytest.approx(0.08)


def _one_update(cfg, params, grads):
  tx = optim.make_optimizer(cfg, lambda step: 0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("wd_on_bn_and_bias", [True, False])
def test_weight_decay_mask(wd_on_bn_and_bias):
  cfg = recipe.optim_config()
  cfg.update(weight_decay=0.5, grad_clip_norm=0.0, wd_on_bn_and_bias=wd_on_bn_and_bias)
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 2), 2.0)},
            "bn": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates = _one_update(cfg, params, zero_grads)
  decayed = -0.1 * 0.5 * 2.0  # -lr * wd * p
  np.testing.assert_allclose(updates["conv"]["kernel"], decayed)
  expected_1d = decayed if wd_on_bn_and_bias else 0.0
  np.testing.assert_allclose(updates["bn"]["scale"], expected_1d)
  np.testing.assert_allclose(updates["bn"]["bias"], expected_1d)


def test_global_norm_clipping():
  cfg = recipe.optim_config()
  cfg.update(weight_decay=0.0)  # Isolate clipping; clip norm 20 from the recipe.
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((4,))}
  big = {"a": jnp.array([30.0, 0.0, 0.0]), "b": jnp.array([0.0, 40.0, 0.0, 0.0])}  # norm 50
  np.testing.assert_allclose(_one_update(cfg, params, big)["b"][1], -0.1 * 40.0 * 20 / 50,
                             rtol=1e-6)
  small = jax.tree.map(lambda g: g / 10, big)  # norm 5: untouched
  np.testing.assert_allclose(_one_update(cfg, params, small)["a"][0], -0.1 * 3.0, rtol=1e-6)


def test_update_rule_equals_torch_sgd_sequence():
  """Three steps of clip -> (g + wd p) -> buf = mu buf + g -> p -= lr buf, written out by hand."""
  cfg = recipe.optim_config()
  cfg.update(weight_decay=1e-2, grad_clip_norm=1.0)
  lrs = [0.1, 0.2, 0.3]
  tx = optim.make_optimizer(cfg, lambda step: jnp.asarray(lrs)[step])
  rng = np.random.default_rng(0)
  p = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  opt_state = tx.init(p)
  ref_p, buf = np.asarray(p["w"], np.float64), np.zeros((4, 3))
  for lr in lrs:
    g = rng.normal(size=(4, 3))
    updates, opt_state = tx.update({"w": jnp.asarray(g, jnp.float32)}, opt_state, p)
    p = optax.apply_updates(p, updates)
    g = g * min(1.0, 1.0 / np.linalg.norm(g))
    buf = 0.9 * buf + g + 1e-2 * ref_p
    ref_p = ref_p - lr * buf
  np.testing.assert_allclose(p["w"], ref_p, rtol=1e-5, atol=1e-6)

"""The jitted data-parallel step on 8 devices equals the same step on 1 device (global BN)."""

import chex
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fstfl_jax.models import build_model
from fstfl_jax.training import guards
from fstfl_jax.training import sharding as sharding_lib
from fstfl_jax.training import steps
from fstfl_jax.training import train

import test_checkpointing  # noqa: E402  (tests/ is on sys.path)


def tiny_config() -> ml_collections.ConfigDict:
  config = test_checkpointing.tiny_config("fstfl")
  config.train.num_train_examples = 64
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t, s = config.input.batch_size, config.model.num_frames, config.input.crop_size
  return dict(video=rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
              label=rng.integers(0, config.model.num_classes, (b,), dtype=np.int32))


def _two_steps(config, num_devices):
  """Init + two train steps on a mesh of `num_devices`; returns host copies and the shardings."""
  mesh = sharding_lib.make_mesh(num_devices)
  with jax.set_mesh(mesh):
    model = build_model(config.model)
    tx, schedule, init_fn, abstract = train.build(config, model, mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.PRNGKey(0))
    step = steps.jit_train_step(steps.make_train_step(model, tx, schedule),
                                mesh, state_sharding)
    outputs, donated = [], []
    for i in range(2):
      batch = sharding_lib.to_global(_batch(config, i), mesh)
      old_state = state
      state, metrics = step(state, batch)
      donated.append(all(x.is_deleted() for x in jax.tree.leaves(old_state)))
      outputs.append(jax.device_get((state, metrics)))
    info = dict(batch_spec=batch["video"].sharding.spec,
                shard_shape=batch["video"].addressable_shards[0].data.shape,
                param_specs={x.sharding.spec for x in jax.tree.leaves(state)},
                donated=donated[0])
  return outputs, info


@pytest.fixture(scope="module")
def runs():
  config = tiny_config()
  # Make the second step's gradients flow through updated params and BN statistics.
  config.optim.base_lr = 0.5
  return _two_steps(config, 8), _two_steps(config, 1)


def test_eight_devices_equal_one_device(runs):
  (multi, _), (single, _) = runs
  for (state8, m8), (state1, m1) in zip(multi, single):
    chex.assert_trees_all_close(m8, m1, rtol=1e-3, atol=1e-5)
    # New params encode the (clipped, decayed) gradients; the momentum buffer is the gradient.
    chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
    chex.assert_trees_all_close(state8.opt_state, state1.opt_state, rtol=1e-3, atol=1e-5)
    chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=1e-3, atol=1e-5)
  assert int(multi[-1][0].step) == 2
  # Guard against a vacuous comparison: the step changed params and BN statistics.
  first, second = single[0][0], single[1][0]
  assert not np.allclose(first.batch_stats["bn1"]["mean"], second.batch_stats["bn1"]["mean"])
  assert float(single[0][1]["grad_norm"]) > 0


def test_shardings(runs):
  (_, info8), (_, info1) = runs
  assert info8["batch_spec"] == P("data")
  assert info8["shard_shape"] == (1, 4, 32, 32, 3)  # One whole clip (all frames) per device.
  assert info1["shard_shape"] == (8, 4, 32, 32, 3)
  assert info8["param_specs"] == {P()}  # The whole state is replicated.
  assert info8["donated"] and info1["donated"]  # The old state's buffers were reused.



def test_step_flags_a_nonfinite_bn_statistic():
  """Loss, gradients and params stay finite; only the running statistics go bad."""
  config = tiny_config()
  mesh = sharding_lib.make_mesh(1)
  with jax.set_mesh(mesh):
    model = build_model(config.model)
    tx, schedule, init_fn, abstract = train.build(config, model, mesh)
    state = jax.jit(init_fn)(jax.random.PRNGKey(0))
    paths, treedef = jax.tree_util.tree_flatten_with_path(state.batch_stats)
    leaves = [x for _, x in paths]
    leaves[-1] = leaves[-1].at[0].set(np.inf)  # A running statistic of the last BN.
    state = state.replace(batch_stats=jax.tree.unflatten(treedef, leaves))
    step = jax.jit(steps.make_train_step(model, tx, schedule))
    _, metrics = step(state, sharding_lib.to_global(_batch(config), mesh))
  names = guards.quantity_names(abstract.params, abstract.batch_stats)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert names[int(metrics["nonfinite"])] == names[-1]
  assert names[-1].startswith("batch_stats ")
  with pytest.raises(guards.NonFiniteError, match=f"Non-finite {names[-1]} at step 1"):
    guards.check_step(1, int(metrics["nonfinite"]), names)

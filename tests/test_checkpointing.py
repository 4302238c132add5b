"""Checkpoints: crash and pre-emption resume == uninterrupted run; NaN stop; retention; restore.

The runs use the training loop (`train.train_and_evaluate`) end to end with a real grain
iterator over synthetic clips (`SyntheticData`), so both the train state and the data position
go through Orbax.
"""

import json
import os
import re
import signal

import chex
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common, recipe
from fstfl_jax.models import build_model
from fstfl_jax.training import checkpointing
from fstfl_jax.training import guards
from fstfl_jax.training import logs
from fstfl_jax.training import sharding as sharding_lib
from fstfl_jax.training import train

TOTAL_STEPS = 6


class _Batches(grain.transforms.Map):
  """Batch number b -> this process's share of global batch b (the one step b + 1 trains on).

  The global batch depends only on (seed, b), never on the process count, so runs with any
  number of processes see the same global batches. `events` {step: 'crash'|'sigterm'|'nan'}
  fire when the batch of that step is read.
  """

  def __init__(self, cfg, seed, process_index, process_count, events):
    self.shape = (cfg.input.batch_size, cfg.model.num_frames, cfg.input.crop_size,
                  cfg.input.crop_size, 3)
    self.num_classes = cfg.model.num_classes
    self.seed, self.events = seed, events
    local = cfg.input.batch_size // process_count
    self.rows = slice(process_index * local, (process_index + 1) * local)

  def map(self, b):
    step = int(b) + 1
    event = self.events.get(step)
    if event == "crash":
      raise RuntimeError(f"simulated crash while reading the batch of step {step}")
    if event == "sigterm":
      os.kill(os.getpid(), signal.SIGTERM)
    rng = np.random.default_rng([self.seed, int(b)])
    video = rng.uniform(0, 255, self.shape).astype(np.float32)
    label = rng.integers(0, self.num_classes, self.shape[:1]).astype(np.int32)
    if event == "nan":
      video[:] = np.nan
    return dict(video=video[self.rows], label=label[self.rows])


class SyntheticData:
  """A `train.DataModule` with a checkpointable grain iterator over synthetic clips."""

  def __init__(self, cfg, events=None):
    self.cfg, self.events = cfg, dict(events or {})

  def make_train_iter(self, input_cfg, *, process_index, process_count, seed):
    del input_cfg
    ds = grain.MapDataset.range(10**6).map(
      _Batches(self.cfg, seed, process_index, process_count, self.events))
    # No reader threads: events must fire when the loop asks for the batch, not ahead of it.
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def tiny_config(model: str = "gsf") -> ml_collections.ConfigDict:
  """A tiny model and training setup; also used by test_train_step and test_multiprocess."""
  config = ml_collections.ConfigDict()
  # GSF (temporal ops, BN) without the STC by default: resume semantics do not depend on it, and
  # the 8-device test (test_train_step.py) covers the full fstfl step.
  config.model = common.model_config(model, num_classes=5, num_frames=4)
  config.model.update(width=8, stage_sizes=(1, 1, 1, 1))
  config.input = common.input_config("demo", num_frames=4)
  config.input.update(crop_size=32, batch_size=8)
  recipe.add_training(config)
  config.train.update(num_train_examples=32, num_train_steps=TOTAL_STEPS, log_every_steps=1)
  config.checkpoint.update(every_steps=2, keep_latest=2, keep_best=1)
  return config


def run(workdir, events=None, config=None):
  config = config or tiny_config()
  return train.train_and_evaluate(config, str(workdir), model=build_model(config.model),
                                  data=SyntheticData(config, events))


def read_log(workdir):
  with open(os.path.join(workdir, logs.METRICS_FILE), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  keys = ("train/loss", "train/accuracy", "train/grad_norm", "train/lr")
  return [row["step"] for row in rows], {row["step"]: [row[k] for k in keys] for row in rows}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted reference run: (workdir, final state on host)."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, jax.device_get(run(workdir))


def test_crash_and_preemption_resume_equals_uninterrupted(straight, tmp_path):
  ref_dir, ref_state = straight
  # Crash while reading step 4's batch: steps 1-3 are done, the last checkpoint is step 2.
  with pytest.raises(RuntimeError, match="simulated crash"):
    run(tmp_path, {4: "crash"})
  assert checkpointing.make_manager(checkpointing.checkpoint_dir(tmp_path)).all_steps() == [2]
  # Restart; SIGTERM arrives during step 5: it is finished, saved, and the run exits cleanly.
  state = run(tmp_path, {5: "sigterm"})
  assert int(state.step) == 5
  # Restart again: steps 6.
  state = jax.device_get(run(tmp_path))
  assert int(state.step) == TOTAL_STEPS

  ref_steps, ref_log = read_log(ref_dir)
  steps, log = read_log(tmp_path)
  assert ref_steps == steps == list(range(1, TOTAL_STEPS + 1))  # Redone steps logged once.
  for step in steps:
    np.testing.assert_allclose(log[step], ref_log[step], rtol=1e-6, err_msg=f"step {step}")
  chex.assert_trees_all_close(state, ref_state, rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(straight, tmp_path):
  ref_dir, _ = straight
  with pytest.raises(FloatingPointError, match="at step 5"):
    run(tmp_path, {5: "nan"})
  mesh = sharding_lib.make_mesh()
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(tmp_path))
  assert manager.all_steps() == [2, 4]  # Nothing was saved after the bad step.
  good, step = checkpointing.restore_state_only(str(tmp_path), None, mesh)
  ref, _ = checkpointing.restore_state_only(str(ref_dir), None, mesh, step=4)
  assert step == 4
  chex.assert_tree_all_finite(good)
  chex.assert_trees_all_close(good, ref)


def test_huge_lr_from_scratch_stops_before_saving_nonfinite_state(tmp_path):
  """lr 1e8 from scratch: the loss stays finite while the gradient norm turns NaN."""
  config = tiny_config()
  config.optim.update(base_lr=1e8, warmup_epochs=0)
  with pytest.raises(guards.NonFiniteError, match=r"Non-finite \S+ at step (\d+)") as caught:
    run(tmp_path, config=config)
  bad_step = int(re.search(r"at step (\d+)", str(caught.value)).group(1))
  assert 2 < bad_step <= TOTAL_STEPS  # After the first checkpoint, so there is one to keep.
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(tmp_path))
  saved = manager.all_steps()
  assert saved and max(saved) < bad_step
  mesh = sharding_lib.make_mesh()
  for step in saved:
    chex.assert_tree_all_finite(checkpointing.restore_state_only(str(tmp_path), None, mesh,
                                                                 step=step)[0])
  steps, _ = read_log(tmp_path)
  assert steps == list(range(1, bad_step))  # The bad step is not logged as a normal one.


def test_nonfinite_guard_names_the_first_bad_quantity():
  params = {"conv": {"kernel": jnp.ones((2, 2))}, "fc": {"bias": jnp.zeros(3)}}
  stats = {"bn": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}
  names = guards.quantity_names(params, stats)
  assert names == ["loss", "grad_norm", "params conv/kernel", "params fc/bias",
                   "batch_stats bn/mean", "batch_stats bn/var"]
  check = jax.jit(guards.first_nonfinite)
  assert int(check(1.0, 2.0, params, stats)) == -1
  bad_stats = {"bn": {"mean": jnp.zeros(2), "var": jnp.asarray([1.0, jnp.inf])}}
  assert names[int(check(1.0, 2.0, params, bad_stats))] == "batch_stats bn/var"
  bad_params = {"conv": {"kernel": jnp.ones((2, 2))}, "fc": {"bias": jnp.asarray([0, jnp.nan, 0])}}
  assert names[int(check(1.0, 2.0, bad_params, bad_stats))] == "params fc/bias"
  assert names[int(check(1.0, jnp.nan, bad_params, stats))] == "grad_norm"
  with pytest.raises(guards.NonFiniteError, match=r"Non-finite params fc/bias at step 7"):
    guards.check_step(7, int(check(1.0, 2.0, bad_params, stats)), names)


def test_eval_with_nonfinite_scores_never_becomes_best(tmp_path):
  cfg = recipe.checkpoint_config()
  cfg.update(keep_latest=1, keep_best=1, async_save=False)
  manager = checkpointing.make_manager(str(tmp_path), cfg)
  it = iter(grain.MapDataset.range(100).to_iter_dataset(grain.ReadOptions(num_threads=0)))
  evals = {1: {"top1": 0.2, "nonfinite": 0}, 2: {"top1": 1.0, "nonfinite": 3},
           3: {"top1": float("nan")}, 4: None}
  for step, metrics in evals.items():
    next(it)
    checkpointing.save(manager, step, {"x": np.full((3,), step, np.float32)}, it,
                       metrics=metrics)
  manager.wait_until_finished()
  assert manager.best_step() == 1
  assert manager.all_steps() == [1, 4]  # The best finite eval and the latest.
  manager.close()


def test_restore_state_only_onto_one_device(straight):
  ref_dir, ref_state = straight
  assert jax.device_count() == 8  # The checkpoint was written from an 8-device mesh.
  mesh = sharding_lib.make_mesh(1)
  state, step = checkpointing.restore_state_only(str(ref_dir), None, mesh)
  assert step == TOTAL_STEPS
  leaf = jax.tree.leaves(state["params"])[0]
  assert len(leaf.sharding.device_set) == 1
  chex.assert_trees_all_close(state["params"], ref_state.params)
  chex.assert_trees_all_close(state["batch_stats"], ref_state.batch_stats)


def test_retention_keeps_latest_and_best(tmp_path):
  cfg = recipe.checkpoint_config()
  cfg.update(keep_latest=2, keep_best=1)
  manager = checkpointing.make_manager(str(tmp_path), cfg)
  it = iter(grain.MapDataset.range(100).to_iter_dataset(grain.ReadOptions(num_threads=0)))
  top1 = {2: 0.9, 4: 0.1}  # Validation only at steps 2 and 4; step 2 is the best.
  for step in range(1, 6):
    next(it)
    checkpointing.save(manager, step, {"x": np.full((3,), step, np.float32)}, it,
                       metrics={"top1": top1[step]} if step in top1 else None)
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 4, 5]  # Best (2) and the latest two (4, 5).
  assert manager.best_step() == 2
  restored_it = iter(grain.MapDataset.range(100).to_iter_dataset(grain.ReadOptions(num_threads=0)))
  state = checkpointing.restore(manager, 5, {"x": np.zeros((3,), np.float32)}, restored_it)
  np.testing.assert_array_equal(state["x"], 5)
  assert next(restored_it) == 5  # The iterator continues after the 5 elements read.
  manager.close()


def test_init_from_run_and_from_imagenet_file(straight, tmp_path):
  from fstfl_jax.models import convert
  ref_dir, ref_state = straight
  config = tiny_config()
  config.model.num_classes = 7  # A new head, as when fine-tuning Kinetics -> UCF-101.
  mesh = sharding_lib.make_mesh()
  with jax.set_mesh(mesh):
    tx, _, init_fn, abstract = train.build(config, build_model(config.model), mesh)
    fresh = jax.jit(init_fn, out_shardings=jax.tree.map(lambda x: x.sharding, abstract))(
      jax.random.PRNGKey(1))
    config.init_from = str(ref_dir)
    state = jax.device_get(train.load_pretrained(config, fresh, tx, mesh))
  # Everything but the classifier comes from the other run; the classifier stays fresh.
  np.testing.assert_array_equal(state.params["fc"]["kernel"], fresh.params["fc"]["kernel"])
  np.testing.assert_array_equal(state.params["conv1"]["kernel"],
                                ref_state.params["conv1"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["bn1"]["mean"],
                                ref_state.batch_stats["bn1"]["mean"])
  assert int(state.step) == 0

  # A converted ImageNet file: backbone tensors only (here taken from the reference run).
  backbone = {k: v for k, v in ref_state.params.items()
              if k.startswith(("conv1", "bn1", "layer"))}
  path = tmp_path / "imagenet.msgpack"
  convert.save_converted({"params": backbone, "batch_stats": ref_state.batch_stats}, path)
  config.init_from, config.init_imagenet = "", str(path)
  with jax.set_mesh(mesh):
    state = jax.device_get(train.load_pretrained(config, fresh, tx, mesh))
  np.testing.assert_array_equal(state.params["layer2_0"]["conv1"]["kernel"],
                                ref_state.params["layer2_0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(state.params["fc"]["bias"], fresh.params["fc"]["bias"])

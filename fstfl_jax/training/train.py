"""The training loop: one jitted data-parallel step, logging, checkpoints, resume, validation.

`train_and_evaluate` follows big_vision's order: optimizer and abstract state (shapes by
`eval_shape`) -> input -> restore or initialise -> jitted step -> loop (log, NaN check,
checkpoint, validate). The caller (`fstfl_jax.apps.experiment`) builds the model once per run,
checks the config against its data dir, and hands in the model, the input pipeline and the
validation function, so this loop knows neither the data dir nor the eval protocols. Metrics
stay on device until a log, eval or checkpoint step, so the host never waits for a step it does
not need.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from fstfl_jax.training import checkpointing
from fstfl_jax.training import guards
from fstfl_jax.training import logs as logs_lib
from fstfl_jax.training import optim
from fstfl_jax.training import profiling
from fstfl_jax.training import sharding as sharding_lib
from fstfl_jax.training import state as ts
from fstfl_jax.training import steps as steps_lib

Batch = dict[str, Any]


class DataModule(Protocol):
  """What the loop needs from the input pipeline (`data_pipelines.pipeline`)."""

  def make_train_iter(self, input_cfg: ml_collections.ConfigDict, *, process_index: int,
                      process_count: int, seed: int) -> Iterator[Batch]: ...


# Validation: eval_fn(state, step) -> {"top1": ..., ...} (host floats), e.g.
# `fstfl_jax.evaluation.evaluate.make_validator`'s.
EvalFn = Callable[[ts.TrainState, int], dict[str, float]]


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """Global batches per epoch of `config.train.num_train_examples` clips (at least 1).

  Raises:
    ValueError: `num_train_examples` is unresolved (<= 0): the data dir's train split size is
      filled in by `fstfl_jax.apps.consistency.check`, which every entry point runs first.
  """
  if config.train.num_train_examples <= 0:
    raise ValueError(f"config.train.num_train_examples={config.train.num_train_examples}: an "
                     "epoch needs the train split's size; resolve it from the data dir with "
                     "fstfl_jax.apps.consistency.check or set it explicitly.")
  return max(1, config.train.num_train_examples // config.input.batch_size)


def total_steps(config: ml_collections.ConfigDict) -> int:
  if config.train.num_train_steps > 0:
    return config.train.num_train_steps
  return config.optim.num_epochs * steps_per_epoch(config)


def build(config: ml_collections.ConfigDict, model: Any, mesh: jax.sharding.Mesh):
  """Optimizer, schedule, init function and the abstract (shape-only) train state of `model`."""
  schedule = optim.make_schedule(config.optim, steps_per_epoch(config), config.input.batch_size)
  tx = optim.make_optimizer(config.optim, schedule)
  size = config.input.crop_size
  init_fn = ts.make_init_fn(model, tx, (1, config.model.num_frames, size, size, 3))
  rng = jax.random.PRNGKey(config.train.seed)
  abstract = checkpointing.with_sharding(jax.eval_shape(init_fn, rng),
                                         sharding_lib.replicated(mesh))
  return tx, schedule, init_fn, abstract


def load_pretrained(config: ml_collections.ConfigDict, state: ts.TrainState,
                     tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> ts.TrainState:
  """config.init_from (another run's weights) > config.init_imagenet (converted file)."""
  current = {"params": state.params, "batch_stats": state.batch_stats}
  if config.init_from:
    source, step = checkpointing.restore_state_only(config.init_from, None, mesh)
    logging.info("Initialising from %s (step %d).", config.init_from, step)
    variables = {k: ts.merge_matching(current[k], source[k], f"init_from {k}") for k in current}
  elif config.init_imagenet:
    from fstfl_jax.models import convert  # Imported here: only this path needs it.
    variables, report = convert.merge_pretrained(current, convert.load_converted(
      config.init_imagenet))
    logging.info("ImageNet init from %s: %d tensors copied, fresh: %s", config.init_imagenet,
                 len(report.copied), report.kept_fresh)
  else:
    return state
  state = ts.replace_weights(state, tx, variables)
  return jax.device_put(state, jax.tree.map(lambda _: sharding_lib.replicated(mesh), state))


def _summarise(pending: list[tuple[int, steps_lib.Metrics]], names: list[str]) -> dict[str, float]:
  """Fetches the buffered step metrics; raises at the first step with a non-finite quantity."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, fetched):
    guards.check_step(step, int(m[guards.NONFINITE_KEY]), names,
                      {k: float(m[k]) for k in ("loss", "grad_norm")})
  out = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "accuracy", "grad_norm")}
  out["lr"] = float(fetched[-1]["lr"])
  return out


def run_summary(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                abstract_state: ts.TrainState, start_step: int) -> str:
  """The one-screen summary a run starts with: devices, model size, batch and schedule."""
  params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
  batch = config.input.batch_size
  lines = [
    f"model {config.model.name}, {config.model.num_frames} frames at {config.input.crop_size}px, "
    f"{config.model.num_classes} classes, {params:,} params, {config.model.dtype}",
    f"{jax.process_count()} process(es), {jax.local_device_count()} local / "
    f"{mesh.size} global {jax.devices()[0].platform} devices",
    f"batch {batch} clips global, {batch // jax.process_count()} per process, "
    f"{batch // mesh.size} per device",
    f"data {config.input.data_dir}: {config.train.num_train_examples} train clips per epoch, "
    f"{steps_per_epoch(config)} steps per epoch, {total_steps(config)} steps in total"
    + (f", resuming at step {start_step}" if start_step else ""),
    f"lr {optim.scaled_base_lr(config.optim, batch):.4g} after "
    f"{config.optim.warmup_epochs} warm-up epochs, {config.optim.num_epochs} epochs",
  ]
  return "run summary\n  " + "\n  ".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, model: Any,
                       data: DataModule, validate: EvalFn | None = None,
                       mesh: jax.sharding.Mesh | None = None) -> ts.TrainState:
  """Trains `model` (resuming from `workdir` if it has a checkpoint); returns the final state.

  Args:
    config: the full config, checked against its data (`train.num_train_examples` resolved).
    workdir: checkpoints, metrics.jsonl and TensorBoard events go here.
    model: the run's model (`fstfl_jax.models.build_model(config.model)`).
    data: the input pipeline (`data_pipelines.pipeline`, or any `DataModule`).
    validate: called every `train.eval_every_epochs` and at the end (`train.eval_at_end`);
      None trains without validation.
    mesh: the `('data',)` mesh; default all devices.

  Raises:
    guards.NonFiniteError: on a non-finite loss, gradient norm, parameter or BN statistic, naming
      the step and the quantity; nothing of that step is saved.
  """
  # ---------------------------------------------------------------- Mesh, optimizer, state.
  mesh = mesh or sharding_lib.make_mesh()
  sharding_lib.check_batch(config.input.batch_size, mesh)
  profile = profiling.ProfileWindow(config.train.profile_steps, workdir)  # Checks the spec.
  num_steps = total_steps(config)
  spe = steps_per_epoch(config)
  with jax.set_mesh(mesh):
    tx, schedule, init_fn, abstract = build(config, model, mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    guard_names = guards.quantity_names(abstract.params, abstract.batch_stats)
    train_step = steps_lib.jit_train_step(steps_lib.make_train_step(model, tx, schedule),
                                          mesh, state_sharding)

    # -------------------------------------------------------------------------- Input.
    train_iter = data.make_train_iter(config.input, process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      seed=config.input.shuffle_seed)

    # ----------------------------------- Resume: own checkpoint > init_from > ImageNet > scratch.
    manager = checkpointing.make_manager(checkpointing.checkpoint_dir(workdir), config.checkpoint)
    latest = manager.latest_step()
    if latest is not None:
      logging.info("Resuming from %s step %d.", manager.directory, latest)
      state = checkpointing.restore(manager, latest, abstract, train_iter)
    else:
      state = jax.jit(init_fn, out_shardings=state_sharding)(
        jax.random.PRNGKey(config.train.seed))
      state = load_pretrained(config, state, tx, mesh)
    step = int(jax.device_get(state.step))

    logging.info("%s", run_summary(config, mesh, abstract, step))

    # ---------------------------------------------------------------------------- Loop.
    log_every = max(1, config.train.log_every_steps)
    eval_every = config.train.eval_every_epochs * spe if validate else 0
    logs = logs_lib.TrainLogs(workdir, num_steps, step)
    watcher = checkpointing.PreemptionWatcher()
    pending: list[tuple[int, steps_lib.Metrics]] = []
    compiled_step = None
    clock, window_step = profiling.WaitClock(), step
    try:
      while step < num_steps:
        profile.before(step)
        started = time.monotonic()
        batch = sharding_lib.to_global(next(train_iter), mesh)
        clock.add_input(time.monotonic() - started)
        if compiled_step is None:
          logging.info("Compiling the train step (once per run; minutes for a full ResNet-50).")
          started = time.monotonic()
          compiled_step = sharding_lib.compile_in_lockstep(train_step, state, batch,
                                                           name=f"train_step_compiled_{step}")
          logging.info("Compiled in %.0f s.", time.monotonic() - started)
          clock.restart()  # Rates and wait fractions leave the compilation out.
        state, step_metrics = compiled_step(state, batch)
        profile.after(step, state)
        step += 1
        pending.append((step, step_metrics))

        last = step == num_steps
        do_eval = bool(eval_every and step % eval_every == 0) or (
          last and validate is not None and config.train.eval_at_end)
        every = config.checkpoint.every_steps
        do_ckpt = do_eval or last or (every > 0 and step % every == 0)
        stop = watcher.should_stop(step)  # Every step: a pre-emption notice gives little time.
        if not (do_ckpt or stop or step % log_every == 0):
          continue
        started = time.monotonic()
        values = _summarise(pending, guard_names)  # Waits for the device: the guard's sync.
        clock.add_device(time.monotonic() - started)
        values.update(clock.fractions())
        clips = (step - window_step) * config.input.batch_size
        values["clips_per_sec"] = clips / clock.elapsed()
        values["epoch"] = step / spe
        pending, window_step = [], step
        logs.write(step, values, "train")
        logging.info("train step %s | loss %.4f acc %.3f lr %.3g | %.1f clips/s, waiting for "
                     "input %.0f%% / device %.0f%%", logs.progress.update(step), values["loss"],
                     values["accuracy"], values["lr"], values["clips_per_sec"],
                     100 * values["input_wait_fraction"], 100 * values["device_wait_fraction"])

        eval_metrics = None
        if do_eval:
          eval_metrics = {k: float(v) for k, v in validate(state, step).items()}
          logs.write(step, eval_metrics, "val")
          logging.info("val step %d: %s", step, eval_metrics)
        if do_ckpt or stop:
          checkpointing.save(manager, step, state, train_iter, metrics=eval_metrics)
        if stop:
          logging.warning("Stopped by pre-emption after step %d; checkpoint saved.", step)
          break
        clock.restart()  # Validation and checkpoints are not part of the next interval.
    finally:
      profile.close()
      # Lets an async save of the last good state finish even when a NaN aborts the run.
      manager.wait_until_finished()
      manager.close()
      watcher.close()
      logs.close()
  return state

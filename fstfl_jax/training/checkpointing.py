"""Orbax checkpoints of {train state, data iterator}, retention, and the pre-emption flag.

One step directory `<workdir>/checkpoints/<step>/` holds two items: `state` (the TrainState,
global jax arrays) and `data` (the grain iterator position, one JSON per process). This is the
only module that talks to Orbax, so a move to the V1 API stays a one-file change.

Retention: the latest `keep_latest` steps plus the `keep_best` steps by validation top-1. It
is spelled as a preservation policy because `max_to_keep` combined with `best_fn` keeps the
best steps only and deletes the latest one, silently rewinding a resumed run.
"""

import signal
import threading
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.training import guards
from fstfl_jax.training import sharding as sharding_lib

STATE, DATA = "state", "data"


class CheckpointNotFoundError(cli.UserError, FileNotFoundError):
  """No checkpoint (or not the asked-for step) where one was expected."""
BEST_METRIC = "top1"


def checkpoint_dir(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`, local (absolute) or `gs://` (handed to Orbax unchanged)."""
  return storage.path(workdir) / "checkpoints"


def _best_metric(metrics: dict[str, float]) -> float:
  return metrics[BEST_METRIC]


def make_manager(directory: str | epath.Path, ckpt_cfg: ml_collections.ConfigDict | None = None,
                 *, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over `directory` (see `checkpoint_dir`); `ckpt_cfg` from configs/recipe.py."""
  keep = [policies.LatestN(n=ckpt_cfg.keep_latest if ckpt_cfg else 1)]
  if ckpt_cfg and ckpt_cfg.keep_best:
    # Steps without eval metrics are left to LatestN, or they would all be kept forever.
    keep.append(policies.BestN(get_metric_fn=_best_metric, reverse=False, n=ckpt_cfg.keep_best,
                               keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policies.AnyPreservationPolicy(keep),
    best_fn=_best_metric, best_mode="max",   # For `best_step()` only.
    enable_async_checkpointing=bool(ckpt_cfg.async_save) if ckpt_cfg else False,
    create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(
    directory, options=options,
    item_handlers={STATE: ocp.StandardCheckpointHandler(),
                   DATA: grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metrics: dict[str, float] | None = None) -> None:
  """Starts an (async) save of state and iterator at `step`; eval `metrics` rank best steps.

  Metrics with non-finite scores rank nothing (`guards.rankable_metrics`).
  """
  metrics = guards.rankable_metrics(metrics)
  manager.save(step, args=ocp.args.Composite(
    **{STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(data_iter)}),
    metrics=metrics, force=True)


def with_sharding(abstract: Any, sharding: jax.sharding.Sharding) -> Any:
  """Every leaf as a ShapeDtypeStruct placed with `sharding` (restore target)."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any) -> Any:
  """Restores the train state (onto `abstract_state`'s shardings) and, in place, the iterator."""
  restored = manager.restore(step, args=ocp.args.Composite(
    **{STATE: ocp.args.StandardRestore(abstract_state),
       DATA: grain.checkpoint.CheckpointRestore(data_iter)}))
  return restored[STATE]


def _resolve_dir(workdir: str) -> epath.Path:
  """A workdir or its `checkpoints/` directory -> the latter (local or `gs://`)."""
  path = storage.path(workdir)
  nested = path / "checkpoints"
  if nested.is_dir():
    return nested
  if path.is_dir():
    return path
  raise CheckpointNotFoundError(f"{workdir}: no such workdir (expected a training workdir with "
                                "checkpoints/, or the checkpoints/ directory itself).")


def restore_state_only(workdir: str, abstract_state: Any | None, mesh: jax.sharding.Mesh,
                       step: int | None = None) -> tuple[Any, int]:
  """Restores only the `state` item, replicated onto `mesh`, whatever mesh it was saved from.

  Args:
    workdir: a training workdir, or its `checkpoints/` directory.
    abstract_state: target pytree (arrays or ShapeDtypeStructs, e.g. from `jax.eval_shape`);
      None restores whatever the checkpoint holds, as nested dicts.
    mesh: the current mesh; an 8-device checkpoint restores onto 1 device and vice versa.
    step: a saved step; None takes the latest.

  Returns:
    (state, step).
  """
  directory = _resolve_dir(workdir)
  manager = make_manager(directory, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointNotFoundError(f"{directory}: no checkpoint found (train first, or check the "
                                  "--workdir path).")
  if step not in manager.all_steps():
    raise CheckpointNotFoundError(f"Step {step} not in {directory}; saved: {manager.all_steps()}.")
  if abstract_state is None:
    abstract_state = manager.item_metadata(step)[STATE]
  target = with_sharding(abstract_state, sharding_lib.replicated(mesh))
  restored = manager.restore(step, args=ocp.args.Composite(
    **{STATE: ocp.args.StandardRestore(target)}))
  manager.close()
  return restored[STATE], step


def choose_step(config: ml_collections.ConfigDict, workdir: str, which: str) -> int | None:
  """'latest' -> None (restore takes the latest), 'best' -> best step by validation top-1."""
  if which == "latest":
    return None
  if which != "best":
    raise ValueError(f"checkpoint={which!r}; expected 'latest' or 'best'.")
  manager = make_manager(checkpoint_dir(workdir), config.checkpoint, read_only=True)
  best = manager.best_step()
  manager.close()
  if best is None:
    raise CheckpointNotFoundError(
      f"No checkpoint with validation metrics in {workdir}: cannot pick the best one; use "
      "checkpoint='latest'.")
  return best


class PreemptionWatcher:
  """Tells the loop, at every step, that a pre-emption notice (SIGTERM) asks it to save and stop.

  One process: a SIGTERM handler sets a flag. Several processes (`jax.distributed`): JAX's
  pre-emption sync manager owns SIGTERM; when any process gets the notice, every process learns
  the same safe step from `reached_preemption_sync_point`, so all save the same step and exit
  together. Call `should_stop(step)` after every step, on every process.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi_process = jax.distributed.is_initialized()
    # With jax.distributed up, our handler would replace the sync manager's own.
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will save a checkpoint and stop.", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

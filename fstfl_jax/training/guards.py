"""Finite-state guard: a diverging run stops at the first bad step, and nothing non-finite is kept.

Inside the jitted train step `first_nonfinite` reduces the loss, the gradient norm, every updated
parameter and every BN statistic to one bool each and returns the index of the first one that is
not finite (-1 when all are): one int32 per step reaches the host, never the tree. The loop
fetches it with the other step metrics before any log, eval or checkpoint and `check_step`
raises `NonFiniteError` naming the step and the quantity (`params layer1_0/conv1/kernel`), so a
non-finite state is never saved and the checkpoints written before it stay as they were.

`rankable_metrics` keeps an eval whose scores were not all finite from ranking a checkpoint as
the best one; `check_finite_variables` lets `predict` refuse a checkpoint holding NaN or Inf.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from data_pipelines import cli

# Order in which a step's quantities are checked and reported.
SCALARS = ("loss", "grad_norm")
# Step metrics: the index of the first non-finite quantity (train) or the number of videos whose
# scores were not all finite (eval).
NONFINITE_KEY = "nonfinite"


class NonFiniteError(cli.UserError, FloatingPointError):
  """A training step produced NaN or Inf; the message names the step and the first quantity."""


def _leaf_names(tree: Any, prefix: str = "") -> list[str]:
  """'prefix a/b/c' per leaf, in `jax.tree.leaves` order."""
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(prefix + " " if prefix else "")
          + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
          for path, _ in paths]


def quantity_names(params: Any, batch_stats: Any) -> list[str]:
  """Names of the checked quantities, in `first_nonfinite`'s order (shapes are enough)."""
  return list(SCALARS) + _leaf_names(params, "params") + _leaf_names(batch_stats, "batch_stats")


def _all_finite(leaves: Sequence[jax.Array]) -> jax.Array:
  """bool [len(leaves)]: each leaf entirely finite."""
  return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def first_nonfinite(loss: jax.Array, grad_norm: jax.Array, params: Any,
                    batch_stats: Any) -> jax.Array:
  """int32 scalar: index into `quantity_names` of the first non-finite quantity, or -1.

  Traceable (runs inside the train step); costs one elementwise pass over the state.
  """
  ok = _all_finite([loss, grad_norm, *jax.tree.leaves(params), *jax.tree.leaves(batch_stats)])
  return jnp.where(ok.all(), -1, jnp.argmin(ok)).astype(jnp.int32)


def check_step(step: int, code: int, names: Sequence[str],
               values: Mapping[str, float] | None = None) -> None:
  """Raises `NonFiniteError` when `code` (from `first_nonfinite`) flags a quantity of `step`.

  Args:
    step: the step that produced the state (1-based, as logged).
    code: -1, or the index into `names`.
    names: `quantity_names(...)`.
    values: the step's loss and grad_norm, shown in the message.
  """
  if code < 0:
    return
  shown = ", ".join(f"{k} {v:.4g}" for k, v in (values or {}).items())
  raise NonFiniteError(
    f"Non-finite {names[code]} at step {step} ({shown}); stopping. Nothing from this step was "
    "saved and the checkpoints before it are untouched: lower optim.base_lr or restart from one.")


def rankable_metrics(metrics: Mapping[str, float] | None) -> Mapping[str, float] | None:
  """`metrics`, or None when they must not rank a checkpoint (non-finite scores or values).

  A checkpoint saved without metrics is kept only as one of the latest, never as the best.
  """
  if metrics is None:
    return None
  bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
  if metrics.get(NONFINITE_KEY, 0) > 0 or bad:
    logging.warning("Eval metrics %s are not all finite (%s); this checkpoint cannot become the "
                    "best one.", dict(metrics), bad or f"{metrics[NONFINITE_KEY]:g} videos with "
                    "non-finite scores")
    return None
  return metrics


@jax.jit
def _tree_flags(tree: Any) -> jax.Array:
  return _all_finite(jax.tree.leaves(tree))


def check_finite_variables(variables: Mapping[str, Any], where: str) -> None:
  """Raises `NonFiniteError` naming the first leaf of {'params', 'batch_stats'} with NaN/Inf.

  The reduction runs on the arrays' devices; only one bool per leaf comes back.
  """
  flags = jax.device_get(_tree_flags(dict(variables)))
  if flags.all():
    return
  names = _leaf_names(dict(variables))
  raise NonFiniteError(f"{where}: {names[int(flags.argmin())]} holds NaN or Inf; this checkpoint "
                       "cannot be used (pick an earlier step or retrain with a lower lr).")

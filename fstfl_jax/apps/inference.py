"""A trained run, ready to apply: its config, weights, class names, and probabilities.

Shared by `fstfl_jax.apps.predict` and `fstfl_jax.apps.gradcam`.
"""

import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from ml_collections.config_flags import config_flags

from data_pipelines import cli
from data_pipelines import storage
from data_pipelines.records import reading
from fstfl_jax.training import checkpointing
from fstfl_jax.training import guards


def load_config(workdir: str, config_spec: str | None = None) -> ml_collections.ConfigDict:
  """`config_spec` (`path[:variants]`, as main.py takes it), else `<workdir>/config.json`."""
  if config_spec:
    return config_flags.ConfigFileFlagParser(name="config").parse(
      cli.installed_config(config_spec))
  path = storage.path(workdir) / "config.json"
  if not path.exists():
    raise storage.StorageError(f"{path}: missing; pass --config configs/<dataset>.py (the "
                               "config the run was trained with).")
  return ml_collections.ConfigDict(storage.read_json(path))


def class_names(config: ml_collections.ConfigDict, prog: str) -> list[str]:
  """The dataset's class names, or "class <i>" (with a warning from `prog` on stderr) when its
  metadata is not on this machine."""
  k = config.model.num_classes
  try:
    names = reading.read_info(config.input.data_dir).class_names
    problem = f"it names {len(names)} classes"
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types; fall back)
    names, problem = [], " ".join(f"{type(e).__name__}: {e}".split())
  if len(names) != k:
    print(f"{prog}: warning: no names for the model's {k} classes in data dir "
          f"{config.input.data_dir!r} ({problem}); printing class indices.", file=sys.stderr)
    return [f"class {i}" for i in range(k)]
  return names


def restore_variables(config: ml_collections.ConfigDict, workdir: str, checkpoint: str,
                      mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], int]:
  """({'params', 'batch_stats'} replicated on `mesh`, step) of the latest or best checkpoint.

  Raises:
    guards.NonFiniteError: the checkpoint holds NaN or Inf (its predictions would be NaN).
  """
  # Orbax warns on every read-only restore; those lines would bury the per-file output.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    step = checkpointing.choose_step(config, workdir, checkpoint)
    state, step = checkpointing.restore_state_only(workdir, None, mesh, step=step)
  finally:
    logging.set_verbosity(verbosity)
  variables = dict(params=state["params"], batch_stats=state["batch_stats"])
  guards.check_finite_variables(variables, f"{workdir} checkpoint step {step}")
  return variables, step


def softmax(logits: np.ndarray) -> np.ndarray:
  """Probabilities over the last axis, computed stably in the input's precision."""
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)

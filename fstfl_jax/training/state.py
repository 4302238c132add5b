"""The train state pytree, its creation, and loading of pretrained weights into it."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed as one item.

  `rng` is the run's base key (uint32 [2]); step `s` uses `fold_in(rng, s)`, so a resumed run
  draws the same dropout masks as an uninterrupted one.
  """
  step: jax.Array          # int32 [], number of completed steps.
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation,
                 input_shape: tuple[int, ...]) -> Callable[[jax.Array], TrainState]:
  """Returns `init(rng) -> TrainState` for a float video of `input_shape` [B, T, H, W, 3].

  Meant for `jax.jit(..., out_shardings=...)` so parameters are created directly in place.
  """

  def init(rng: jax.Array) -> TrainState:
    param_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
    variables = model.init({"params": param_rng, "dropout": dropout_rng},
                           jnp.zeros(input_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=run_rng)

  return init


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)) if tree else {}


def merge_matching(target: Any, source: Any, what: str) -> Any:
  """Copies every leaf of `source` whose path and shape exist in `target`.

  Used to start from another run's weights (e.g. Kinetics -> UCF-101): leaves that do not match,
  such as a classifier with a different class count, keep their initial values and are logged.
  """
  tgt, src = _flat(target), _flat(source)
  fresh = []
  for path, leaf in tgt.items():
    new = src.get(path)
    if new is None or tuple(np.shape(new)) != tuple(leaf.shape):
      fresh.append("/".join(path))
    else:
      tgt[path] = jnp.asarray(new, leaf.dtype)
  if len(fresh) == len(tgt):
    raise ValueError(f"{what}: no variable matches by name and shape; the model expects e.g. "
                     f"{'/'.join(next(iter(tgt)))}, the source has e.g. "
                     f"{'/'.join(next(iter(src), ('nothing',)))}.")
  logging.info("%s: copied %d/%d leaves; kept initial values for %s",
               what, len(tgt) - len(fresh), len(tgt), fresh)
  return flax.traverse_util.unflatten_dict(tgt)


def replace_weights(state: TrainState, tx: optax.GradientTransformation,
                    variables: dict[str, Any]) -> TrainState:
  """`state` with params/batch_stats from `variables` and a fresh optimizer state."""
  params = variables["params"]
  return state.replace(params=params, batch_stats=variables.get("batch_stats", state.batch_stats),
                       opt_state=tx.init(params))

"""The jitted train and eval steps, side by side: pure functions of (state or variables, batch).

Both are written as single-device code. Run under `jax.jit` with the batch sharded `P('data')`
on its clip (or video) axis and the weights replicated, the mean loss, the BatchNorm moments and
the metric sums are reductions over a sharded axis, so XLA inserts the all-reduces itself:
gradients and BN statistics are global (SyncBN) and results do not depend on the device count.
Each `make_*` call returns a new function to compile; build it once per run and keep it.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from data_pipelines import device_transforms
from fstfl_jax.training import guards
from fstfl_jax.training import metrics as metrics_lib
from fstfl_jax.training import sharding as sharding_lib
from fstfl_jax.training import state as ts

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
TOP_K = (1, 5)


def make_train_step(model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule
                    ) -> Callable[[ts.TrainState, Batch], tuple[ts.TrainState, Metrics]]:
  """A pure `step(state, batch) -> (state, metrics)`.

  `batch`: video uint8 [B, T, S, S, 3] (B = global clips; the model normalises it), label int32
  [B]; or the input pipeline's whole frames with resize taps (`device_transforms.train_video`).
  `metrics[guards.NONFINITE_KEY]` is the index of the first non-finite quantity (or -1).
  """

  def step(state: ts.TrainState, batch: Batch) -> tuple[ts.TrainState, Metrics]:
    # fold_in(step): the dropout key depends only on the step, so resumed runs repeat it.
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    video, labels = device_transforms.train_video(batch), batch["label"]

    def loss_fn(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, video, train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      loss = metrics_lib.softmax_cross_entropy(logits, labels).mean()
      return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    accuracy = metrics_lib.topk_correct(logits, labels, (1,))[1].mean(dtype=jnp.float32)
    grad_norm = optax.tree.norm(grads)
    nonfinite = guards.first_nonfinite(loss, grad_norm, new_state.params, batch_stats)
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
                       "lr": schedule(state.step), guards.NONFINITE_KEY: nonfinite}

  return step


def jit_train_step(step_fn: Callable, mesh: jax.sharding.Mesh, state_sharding: Any) -> Callable:
  """jit with the state donated (updated in place) and kept replicated."""
  return jax.jit(step_fn, donate_argnums=0,
                 out_shardings=(state_sharding, sharding_lib.replicated(mesh)))


def make_eval_step(model: Any, num_classes: int,
                   views_per_step: int | None = None) -> Callable[..., dict]:
  """The jitted step `(variables, batch) -> sums` for one model; compiled once per batch shape.

  `batch` holds global arrays sharded `P('data')` on the video axis: video uint8
  [B, V, T, S, S, 3], label int32 [B], mask bool [B]. `views_per_step` views of every video
  are folded into one model call of B * views_per_step clips (None: all V at once); fewer views
  per call bound activation memory for 10x3 protocols.

  Returns (replicated) sums over unmasked videos: count, loss, top1, top5, nonfinite (videos
  with a NaN/Inf score), confusion [K, K] and support [K] (videos per class; labels outside
  [0, K) count nowhere), and the view-averaged logits [B, K] (sharded like the batch).
  """

  def step(variables, batch):
    video, labels, mask = batch["video"], batch["label"], batch["mask"]
    b, v = video.shape[:2]
    per_call = views_per_step or v
    if v % per_call:
      raise ValueError(f"views_per_step={per_call} must divide the {v} views per video.")
    # [B, V, ...] -> [V / c, B, c, ...]: lax.map walks the view chunks, B stays sharded.
    chunks = jnp.moveaxis(video.reshape((b, v // per_call, per_call) + video.shape[2:]), 1, 0)

    def chunk_logit_sum(chunk):  # [B, c, T, S, S, 3] -> [B, K]
      clips = chunk.reshape((b * per_call,) + chunk.shape[2:])
      logits = model.apply(variables, clips, train=False).astype(jnp.float32)
      return logits.reshape(b, per_call, -1).sum(axis=1)

    logits = jax.lax.map(chunk_logit_sum, chunks).sum(axis=0) / v
    correct = metrics_lib.topk_correct(logits, labels, TOP_K)
    return {
      "count": metrics_lib.masked_sum(mask, mask),
      "loss": metrics_lib.masked_sum(metrics_lib.softmax_cross_entropy(logits, labels), mask),
      # Non-finite scores predict no class and count as wrong (support = true class counts).
      "confusion": metrics_lib.confusion_matrix(
        labels, metrics_lib.predicted_class(logits), mask, num_classes),
      "support": metrics_lib.masked_sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.int32),
                                        mask),
      guards.NONFINITE_KEY: metrics_lib.masked_sum(~metrics_lib.finite_rows(logits), mask),
      "logits": logits,
      **{f"top{k}": metrics_lib.masked_sum(c, mask) for k, c in correct.items()},
    }

  return jax.jit(step)

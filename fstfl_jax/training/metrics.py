"""Losses, masked accuracy counts and confusion matrices, shared by the train and eval steps.

Everything that runs under `jax.jit` takes a boolean `mask` over the batch so that the padding of
a last, partial eval batch never counts (big_vision evaluators do the same).
`mean_class_accuracy` works on the host's numpy sums. The files a run writes (metrics.jsonl,
TensorBoard, the progress line) are `training.logs`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy, optionally against label-smoothed targets.

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] int class ids.
    label_smoothing: eps; the target puts 1 - eps on the label and eps / K on every class.

  Returns:
    [B] float32 losses.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def label_rank(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """0-based rank of the true class, ties broken towards the lower class index.

  A class ranks above the label if its score is higher, or equal with a smaller index; this is
  the order of a stable descending sort, so top-k results never depend on the sort backend.

  Args:
    logits: [B, K] scores.
    labels: [B] int class ids.

  Returns:
    [B] int32 ranks in [0, K).
  """
  num_classes = logits.shape[-1]
  true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  classes = jnp.arange(num_classes)[None, :]
  above = (logits > true_score) | ((logits == true_score) & (classes < labels[:, None]))
  return jnp.sum(above, axis=-1, dtype=jnp.int32)


def finite_rows(logits: jax.Array) -> jax.Array:
  """[B] bool: every score of the row is finite (a NaN or Inf row ranks nothing)."""
  return jnp.all(jnp.isfinite(logits), axis=-1)


def topk_correct(logits: jax.Array, labels: jax.Array,
                 ks: Sequence[int] = (1, 5)) -> dict[int, jax.Array]:
  """{k: [B] bool} whether the label is among the k best classes (see `label_rank` for ties).

  k larger than the number of classes counts every example as correct. A row with a NaN or Inf
  score is wrong for every k: NaN compares false with everything, so its rank would be 0.
  """
  rank = label_rank(logits, labels)
  finite = finite_rows(logits)
  return {k: (rank < k) & finite for k in ks}


def predicted_class(logits: jax.Array) -> jax.Array:
  """[B] int32 argmax, or -1 for rows with a non-finite score (no class is predicted)."""
  return jnp.where(finite_rows(logits), jnp.argmax(logits, -1), -1).astype(jnp.int32)


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of `values` [B, ...] over the batch rows where `mask` [B] is True; float32 or int32."""
  mask = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
  dtype = jnp.int32 if values.dtype in (jnp.bool_, jnp.int32) else jnp.float32
  return jnp.sum(jnp.where(mask, values, 0).astype(dtype), axis=0)


def confusion_matrix(labels: jax.Array, preds: jax.Array, mask: jax.Array,
                     num_classes: int) -> jax.Array:
  """[K, K] int32 counts, rows = true class, columns = prediction; masked rows are ignored.

  A prediction of -1 (`predicted_class` of a non-finite row) adds to no column, so pass the
  class counts to `mean_class_accuracy` to count it as wrong.

  Built from one-hot outer products summed over the batch: a plain reduction, so it stays
  correct when the batch axis is sharded over devices (XLA inserts the all-reduce).
  """
  true_1h = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  pred_1h = jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
  return masked_sum(true_1h[:, :, None] * pred_1h[:, None, :], mask)


def mean_class_accuracy(confusion: np.ndarray, support: np.ndarray | None = None) -> float:
  """Mean over classes of per-class recall, from a [K, K] confusion matrix.

  Classes without any example are left out of the mean (as in sklearn's balanced accuracy):
  their recall is undefined, and counting them as 0 would penalise a small eval subset.

  Args:
    confusion: [K, K] counts (rows true class).
    support: [K] examples per class; default the row sums. Larger when some examples have no
      prediction (non-finite scores), which then count as wrong.
  """
  confusion = np.asarray(confusion, np.float64)
  support = confusion.sum(axis=1) if support is None else np.asarray(support, np.float64)
  present = support > 0
  if not present.any():
    raise ValueError("Confusion matrix is empty: no evaluated examples.")
  return float(np.mean(np.diag(confusion)[present] / support[present]))

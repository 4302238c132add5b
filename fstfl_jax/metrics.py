"""Losses, masked accuracy counts, confusion matrices, a JSONL metric log and a progress line.

Everything that runs under `jax.jit` takes a boolean `mask` over the batch so that the padding of
a last, partial eval batch never counts (big_vision evaluators do the same). Host-side helpers
(`mean_class_accuracy`, `MetricWriter`, `Progress`) work on numpy values.
"""

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fstfl_jax import storage


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


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


class MetricWriter:
  """A `.jsonl` log, one JSON object per `write`, on process 0 only; local or `gs://`.

  Every process may call it (so callers need no `if process_index == 0`); the others do nothing.
  Each write rewrites the whole file (Cloud Storage objects cannot be appended to; locally the
  file is replaced atomically), so a pre-empted run keeps everything logged so far and a crash
  never leaves a torn line.

  Args:
    path: the log file; existing lines are kept.
    process_index: defaults to `jax.process_index()`.
    keep_until_step: on resume, drop existing lines of later steps (they are about to be redone).
  """

  def __init__(self, path: str | os.PathLike, *, process_index: int | None = None,
               keep_until_step: int | None = None):
    self.path = storage.path(path)
    index = jax.process_index() if process_index is None else process_index
    self.active = index == 0
    self._lines: list[str] = []
    if self.active and self.path.exists():
      for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
          continue
        try:
          step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
          raise storage.StorageError(f"{self.path} line {n}: not a metrics record "
                                     "({\"step\": ...}); move the file away to start a new log."
                                     ) from None
        if keep_until_step is None or step <= keep_until_step:
          self._lines.append(line + "\n")
      if keep_until_step is not None:
        storage.write_text(self.path, "".join(self._lines))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes `{"step": step, **metrics}`; arrays and numpy scalars become JSON values."""
    if not self.active:
      return
    record = {"step": int(step), **_jsonable(dict(metrics))}
    self._lines.append(json.dumps(record) + "\n")
    storage.write_text(self.path, "".join(self._lines))

  def close(self) -> None:
    self.active = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class TensorBoardWriter:
  """Scalar TensorBoard events in `logdir`, local or `gs://`.

  tensorboardX appends to its event files, which Cloud Storage cannot do (its own GCS writer
  fails), so for a `gs://` logdir the events go to a local temporary directory and every
  `write` uploads the files that changed, as whole objects.
  """

  def __init__(self, logdir: str | os.PathLike):
    import tensorboardX  # pylint: disable=g-import-not-at-top  (only process 0 writes events)
    self._remote = storage.path(logdir) if storage.is_remote(logdir) else None
    self._local = (tempfile.mkdtemp(prefix="fstfl_tensorboard_") if self._remote
                   else os.fspath(storage.path(logdir)))
    self._writer = tensorboardX.SummaryWriter(self._local)
    self._uploaded: dict[str, int] = {}

  def write(self, step: int, values: Mapping[str, float]) -> None:
    for k, v in values.items():
      self._writer.add_scalar(k, v, step)
    self._writer.flush()
    if self._remote is not None:
      storage.mirror_dir(self._local, self._remote, self._uploaded)

  def close(self) -> None:
    self._writer.close()
    if self._remote is not None:
      storage.mirror_dir(self._local, self._remote, self._uploaded)
      shutil.rmtree(self._local, ignore_errors=True)


def format_duration(seconds: float) -> str:
  """'1d02h03m', '2h05m', '3m07s' or '12s'."""
  seconds = max(0, int(round(seconds)))
  days, rest = divmod(seconds, 86_400)
  hours, rest = divmod(rest, 3_600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d{hours:02d}h{minutes:02d}m"
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Progress:
  """Rate and ETA for a loop of known length, measured from the first `update`.

  The first update only starts the clock, so compilation time before it does not skew the rate.

  Usage: `p = Progress(total); ...; logging.info("step %d %s", i, p.update(i))`.
  """

  def __init__(self, total: int, *, unit: str = "steps",
               clock: Callable[[], float] = time.monotonic):
    self.total = total
    self.unit = unit
    self._clock = clock
    self._start: tuple[int, float] | None = None
    self.rate = float("nan")

  def update(self, done: int) -> str:
    """Records `done` of `total` units finished; returns e.g. '40/100 2.50 steps/s ETA 24s'."""
    now = self._clock()
    if self._start is None:
      self._start = (done, now)
    first, start = self._start
    if done > first and now > start:
      self.rate = (done - first) / (now - start)
    if not self.rate > 0:  # The clock has only just started.
      return f"{done}/{self.total} ? {self.unit}/s ETA ?"
    eta = format_duration((self.total - done) / self.rate)
    return f"{done}/{self.total} {self.rate:.2f} {self.unit}/s ETA {eta}"

"""Metrics against numpy references: losses, tie-stable top-k, masks, confusion, JSONL, ETA."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from fstfl_jax.training import logs
from fstfl_jax.training import metrics


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_numpy(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 6)
  targets = np.eye(5)[labels] * (1 - smoothing) + smoothing / 5
  want = -(targets * _log_softmax(logits.astype(np.float64))).sum(-1)
  got = metrics.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                      label_smoothing=smoothing)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_label_rank_is_stable_sort_position_under_ties():
  rng = np.random.default_rng(1)
  logits = rng.integers(0, 3, size=(200, 7)).astype(np.float32)  # Many ties.
  labels = rng.integers(0, 7, 200)
  order = np.argsort(-logits, axis=-1, kind="stable")
  want = np.argmax(order == labels[:, None], axis=-1)
  got = metrics.label_rank(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_array_equal(got, want)


def test_topk_ties_prefer_lower_class_index():
  logits = jnp.asarray([[1.0, 1.0, 1.0, 0.0]] * 3)
  labels = jnp.asarray([0, 2, 3])
  got = metrics.topk_correct(logits, labels, ks=(1, 2, 3, 5))
  np.testing.assert_array_equal(got[1], [True, False, False])
  np.testing.assert_array_equal(got[2], [True, False, False])
  np.testing.assert_array_equal(got[3], [True, True, False])
  np.testing.assert_array_equal(got[5], [True, True, True])  # k > K: always correct.


def test_nonfinite_scores_are_wrong_for_every_k_and_every_class():
  nan, inf = float("nan"), float("inf")
  logits = jnp.asarray([[nan] * 4,                  # All NaN: rank 0 if NaN compared "equal".
                        [0.0, nan, 1.0, 2.0],       # One NaN elsewhere: the ranking is undefined.
                        [inf, 0.0, 0.0, 0.0],       # Inf: softmax gives NaN.
                        [0.0, 3.0, 1.0, 2.0]])
  labels = jnp.asarray([0, 3, 0, 1])
  got = metrics.topk_correct(logits, labels, ks=(1, 2, 5))
  for k in (1, 2, 5):  # Even k > K, which counts every finite row as correct.
    np.testing.assert_array_equal(got[k], [False, False, False, True])
  preds = metrics.predicted_class(logits)
  np.testing.assert_array_equal(preds, [-1, -1, -1, 1])
  mask = jnp.ones(4, bool)
  confusion = np.asarray(metrics.confusion_matrix(labels, preds, mask, 4))
  support = np.asarray(metrics.masked_sum(jax.nn.one_hot(labels, 4, dtype=jnp.int32), mask))
  np.testing.assert_array_equal(support, [2, 1, 0, 1])
  # Class 0: two NaN videos, both wrong (0/2); class 1 right (1/1); class 3 NaN (0/1).
  assert metrics.mean_class_accuracy(confusion, support) == pytest.approx((0 + 1 + 0) / 3)


def test_masked_sum_ignores_masked_rows():
  mask = jnp.asarray([True, False, True])
  np.testing.assert_allclose(metrics.masked_sum(jnp.asarray([1.5, 100.0, 2.0]), mask), 3.5)
  count = metrics.masked_sum(jnp.asarray([True, True, False]), mask)
  assert count.dtype == jnp.int32 and int(count) == 1
  rows = metrics.masked_sum(jnp.arange(6.0).reshape(3, 2), mask)
  np.testing.assert_allclose(rows, [0 + 4, 1 + 5])
  # NaN in a masked row (e.g. a padded video) must not leak into the sum.
  np.testing.assert_allclose(metrics.masked_sum(jnp.asarray([1.0, jnp.nan, 2.0]), mask), 3.0)


def _numpy_confusion(labels, preds, mask, k):
  out = np.zeros((k, k), np.int64)
  np.add.at(out, (labels[mask], preds[mask]), 1)
  return out


def test_confusion_matrix_matches_numpy_and_is_shard_invariant():
  rng = np.random.default_rng(2)
  k, b = 5, 16
  labels = rng.integers(0, k, b).astype(np.int32)
  preds = rng.integers(0, k, b).astype(np.int32)
  mask = rng.random(b) < 0.7
  want = _numpy_confusion(labels, preds, mask, k)
  fn = jax.jit(lambda y, p, m: metrics.confusion_matrix(y, p, m, k))
  np.testing.assert_array_equal(fn(labels, preds, mask), want)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (labels, preds, mask)]
  with jax.set_mesh(mesh):
    np.testing.assert_array_equal(fn(*sharded), want)


def test_mean_class_accuracy_skips_absent_classes():
  confusion = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])  # Class 1 never occurs.
  assert metrics.mean_class_accuracy(confusion) == pytest.approx((3 / 4 + 2 / 4) / 2)
  with pytest.raises(ValueError, match="empty"):
    metrics.mean_class_accuracy(np.zeros((3, 3)))


def test_metric_writer_writes_only_on_process_zero(tmp_path):
  path = tmp_path / "logs" / "metrics.jsonl"
  with logs.MetricWriter(path, process_index=0) as writer:
    writer.write(1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25), "hist": np.arange(2)})
    writer.write(2, {"loss": 0.4})
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert lines == [{"step": 1, "loss": 0.5, "acc": 0.25, "hist": [0, 1]},
                   {"step": 2, "loss": 0.4}]
  other = tmp_path / "other" / "metrics.jsonl"
  with logs.MetricWriter(other, process_index=1) as writer:
    writer.write(1, {"loss": 0.5})
  assert not other.exists()


def test_format_duration():
  assert logs.format_duration(12.4) == "12s"
  assert logs.format_duration(187) == "3m07s"
  assert logs.format_duration(2 * 3600 + 5 * 60 + 9) == "2h05m"
  assert logs.format_duration(86_400 + 2 * 3600 + 3 * 60) == "1d02h03m"


def test_progress_rate_and_eta_from_first_update():
  now = [100.0]
  progress = logs.Progress(100, unit="steps", clock=lambda: now[0])
  # Starts the clock (compile time excluded).
  assert progress.update(10) == "10/100 ? steps/s ETA ?"
  now[0] = 104.0
  line = progress.update(20)  # 10 steps in 4 s.
  assert progress.rate == pytest.approx(2.5)
  assert line == "20/100 2.50 steps/s ETA 32s"

"""The evaluation loop: every video of a split scored once, on any number of devices and processes.

`evaluate_state` feeds the eval input (`data_pipelines.pipeline.make_eval_iter`) through a
protocol's jitted eval step (`training.steps.make_eval_step`, built once per run by
`protocols.EvalSteps`) and adds the sums it returns on the host. The eval input pads its last
batch and marks the padding with `mask=False`, so every video counts exactly once. Input checks
that need no device (keys, shapes, the batch split over the devices) run on the first batch;
label ranges and repeated video indices are checked once at the end from sums the step computes
anyway. `make_validator` is the in-training validation; `fstfl_jax.evaluation.reporting` writes
the results.
"""

import collections
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import pipeline
from fstfl_jax.evaluation import protocols
from fstfl_jax.evaluation import scores
from fstfl_jax.training import guards
from fstfl_jax.training import logs
from fstfl_jax.training import metrics
from fstfl_jax.training import sharding
from fstfl_jax.training import train

Batch = Mapping[str, np.ndarray]

# Eval steps dispatched before the host blocks on the oldest one. On CPU, tens of collective
# computations in flight without waiting can deadlock; 2 keeps the device busy while the host
# fetches the previous result (docs/training.md#evaluation-loop).
MAX_IN_FLIGHT = 2


def _check_first_batch(batch: Batch, mesh: jax.sharding.Mesh) -> None:
  """Keys and shapes of the first batch; the input yields one shape, so the others match it."""
  for key in ("video", "label", "mask", "index"):
    if key not in batch:
      raise ValueError(f"Eval batch 0 has no {key!r} entry; it has {sorted(batch)}.")
  video = batch["video"]
  if video.ndim != 6 or video.shape[-1] != 3:
    raise ValueError(f"Eval batch 0: video must be [B, V, T, S, S, 3], got {video.shape}.")
  b = video.shape[0]
  for key in ("label", "mask", "index"):
    if batch[key].shape != (b,):
      raise ValueError(f"Eval batch 0: {key} must have shape ({b},), got {batch[key].shape}.")
  if b * jax.process_count() % mesh.size:
    raise ValueError(
      f"Eval batch 0 has {b} videos per process, which does not split over the {mesh.size} "
      f"devices; make input.eval_batch_size a multiple of {mesh.size}.")


def _check_totals(indices: list[np.ndarray], count: float, support: np.ndarray,
                  num_classes: int) -> None:
  """Each video counted once, every label a class: checked once, after the last batch."""
  missing = int(count) - int(support.sum())
  if missing:
    raise ValueError(f"Eval input has {missing} videos with labels outside [0, {num_classes}); "
                     "the data dir's classes do not match model.num_classes.")
  # Duplicate ids would count a video twice (a pipeline bug): checked per process, whose
  # slices of the split are disjoint.
  ids, counts = np.unique(np.concatenate(indices), return_counts=True)
  if (counts > 1).any():
    raise ValueError(f"Eval input repeats video indices {ids[counts > 1][:10].tolist()}; each "
                     "must count once.")


def evaluate_state(eval_step: Callable[..., dict], variables: Mapping[str, Any],
                   eval_iter: Iterator[Batch], *, mesh: jax.sharding.Mesh, num_classes: int,
                   num_batches: int, with_predictions: bool = False,
                   log_every: int = 50) -> dict[str, Any]:
  """Evaluates `variables` on `num_batches` batches of `eval_iter`.

  Args:
    eval_step: `make_eval_step(model, num_classes, ...)`, built once by the caller.
    variables: {'params', 'batch_stats'}, replicated on `mesh`.
    eval_iter: per-process batches (numpy) with video uint8 [B, V, T, S, S, 3], label int32 [B],
      mask bool [B] (False on padding), index int32 [B] (video id in the split) and,
      optionally, video_id str [B] (the record ids, written with the predictions).
    mesh: the `('data',)` mesh; B must be divisible by its device count per process.
    num_classes: K.
    num_batches: batches to read (the iterator may be longer, e.g. repeating).
    with_predictions: also return per-video predictions (gathered to every process).
    log_every: batches between progress lines.

  Returns:
    dict with top1, top5, mean_class_accuracy, loss (cross-entropy of the averaged logits),
    num_videos, nonfinite (videos with a NaN/Inf score, counted as wrong), confusion (np.int64
    [K, K]) and, with `with_predictions`, `predictions`: a list of `scores.prediction_rows` per
    video (index, video_id when the batches carry one, label, top5, top5_logits, logits of
    every class).
  """
  totals = collections.Counter()
  confusion = np.zeros((num_classes, num_classes), np.int64)
  support = np.zeros(num_classes, np.int64)
  predictions: list[dict[str, Any]] = []
  indices: list[np.ndarray] = []
  pending: collections.deque = collections.deque()
  progress = logs.Progress(num_batches, unit="batches")

  def collect(out: dict) -> None:
    nonlocal confusion, support
    if with_predictions:
      video_id = out.pop("video_id", None)
      gathered = multihost_utils.process_allgather(
        {k: out.pop(k) for k in ("logits", "label", "index", "mask")}, tiled=True)
      if video_id is not None:
        video_id = scores.allgather_strings([str(v) for v in video_id])
      predictions.extend(scores.prediction_rows(**gathered, video_id=video_id))
    host = jax.device_get(out)  # Blocks: bounds the number of computations in flight.
    confusion += host.pop("confusion")
    support += host.pop("support")
    totals.update({k: float(v) for k, v in host.items()})

  with jax.set_mesh(mesh):
    for i in range(num_batches):
      try:
        batch = next(eval_iter)
      except StopIteration:
        raise ValueError(
          f"Eval input ended after {i} batches; {num_batches} were expected.") from None
      if i == 0:
        _check_first_batch(batch, mesh)
      indices.append(batch["index"][batch["mask"]])
      inputs = sharding.to_global(
        {k: batch[k] for k in ("video", "label", "mask", "index")}, mesh)
      out = eval_step(variables, inputs)
      if with_predictions:
        out.update(label=inputs["label"], index=inputs["index"], mask=inputs["mask"])
        if "video_id" in batch:
          out["video_id"] = batch["video_id"]
      else:
        del out["logits"]  # Sharded over the devices; only predictions need them on the host.
      pending.append(out)
      if i == 0:
        progress.update(0)  # The first call compiled; the rate counts from here.
      if len(pending) >= MAX_IN_FLIGHT:
        collect(pending.popleft())
      if log_every and (i + 1) % log_every == 0:
        logging.info("eval %s", progress.update(i + 1))
    while pending:
      collect(pending.popleft())

  count = totals["count"]
  if count == 0:
    raise ValueError(f"No unmasked videos in {num_batches} eval batches.")
  _check_totals(indices, count, support, num_classes)
  result = dict(
    top1=totals["top1"] / count,
    top5=totals["top5"] / count,
    mean_class_accuracy=metrics.mean_class_accuracy(confusion, support),
    loss=totals["loss"] / count,
    num_videos=int(count),
    **{guards.NONFINITE_KEY: int(totals[guards.NONFINITE_KEY])},
    confusion=confusion,
  )
  if with_predictions:
    result["predictions"] = sorted(predictions, key=lambda r: r["index"])
  return result


def run_protocol(config: ml_collections.ConfigDict, name: str, eval_step: Callable[..., dict],
                 variables: Mapping[str, Any], mesh: jax.sharding.Mesh, *,
                 with_predictions: bool = False) -> dict[str, Any]:
  """Evaluates `variables` with protocol `config.evals[name]` on its split (one full pass).

  `eval_step` is `protocol_step(config, name, model)`, built once by the caller.
  """
  clips, crops = protocols.protocol_views(config, name)
  input_cfg = protocols.protocol_input(config, name)
  num_batches = pipeline.num_eval_batches(input_cfg, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  eval_iter = pipeline.make_eval_iter(
    input_cfg, process_index=jax.process_index(), process_count=jax.process_count(),
    clips=clips, crops=crops)
  logging.info("eval %s: split %s, %d clips x %d crops (%s), %d batches of %d videos", name,
               input_cfg.eval_split, clips, crops, input_cfg.test_clip_sampling, num_batches,
               input_cfg.eval_batch_size)
  return evaluate_state(eval_step, variables, eval_iter, mesh=mesh,
                        num_classes=config.model.num_classes, num_batches=num_batches,
                        with_predictions=with_predictions)


def make_validator(config: ml_collections.ConfigDict, model: Any, mesh: jax.sharding.Mesh,
                   steps: protocols.EvalSteps | None = None) -> train.EvalFn:
  """The in-training validation (`train.EvalFn`): scalar metrics of the training protocol.

  The eval step is built here (or taken from `steps`, shared with the run's final evaluation),
  once per run, and reused by every validation.
  """
  name = protocols.training_protocol(config)
  eval_step = (steps or protocols.EvalSteps(config, model))(name)

  def validate(state: Any, step: int) -> dict[str, float]:
    variables = dict(params=state.params, batch_stats=state.batch_stats)
    result = run_protocol(config, name, eval_step, variables, mesh)
    logging.info("validation %s at step %d: top1 %.4f top5 %.4f mean-class %.4f", name, step,
                 result["top1"], result["top5"], result["mean_class_accuracy"])
    return {k: float(v) for k, v in result.items() if np.ndim(v) == 0}

  return validate

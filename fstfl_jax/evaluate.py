"""Video-level evaluation: single- and multi-view test protocols on a restored checkpoint.

A protocol is an entry of `config.evals`, e.g.
  config.evals = {'val_1x1': dict(clips=1, crops=1), 'val_10x3': dict(clips=10, crops=3)}
Required keys: clips, crops (1, 3 or 10). Optional: split (default input.eval_split),
clip_sampling ('uniform' | 'random', default input.test_clip_sampling) and views_per_step
(views per model call, to bound memory). Validation during training uses
`config.train_eval`, or else the protocol with the fewest views.
Each video is seen as V = clips * crops views; the model classifies every view on its own (views
folded into the batch, eval mode) and the video score is the mean of the raw view logits
(docs/data.md#test-views). The eval input pads its last batch and marks the padding with
`mask=False`, so every video counts exactly once.

Results are written by `fstfl_jax.reporting` (JSON summary, confusion PNG, predictions).

The eval step is built once per model and protocol (`protocol_step`) and handed to the loop;
nothing is cached at module level. Input checks that need no device (keys, shapes, the batch
split over the devices) run on the first batch; label ranges and repeated video indices are
checked once at the end from sums the step computes anyway.
"""

import collections
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import pipeline
from data_pipelines import records
from fstfl_jax import checkpointing
from fstfl_jax import consistency
from fstfl_jax import inference
from fstfl_jax import metrics as metrics_lib
from fstfl_jax import reporting
from fstfl_jax import scores
from fstfl_jax import sharding
from fstfl_jax.models import build_model

Batch = Mapping[str, np.ndarray]

TOP_K = (1, 5)
# Eval steps dispatched before the host blocks on the oldest one. On CPU, tens of collective
# computations in flight without waiting can deadlock; 2 keeps the device busy while the host
# fetches the previous result (docs/training.md#evaluation-loop).
MAX_IN_FLIGHT = 2
# Called as eval_fn(state, step) -> {"top1": ..., ...} (host floats); see `make_validator`.
EvalFn = Callable[[Any, int], dict[str, float]]


def make_eval_step(model: Any, num_classes: int,
                   views_per_step: int | None = None) -> Callable[..., dict]:
  """The jitted step `(variables, batch) -> sums` for one model; compiled once per batch shape.

  Build it once and keep it: every call of this function returns a new function to compile.

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
    return dict(
      count=metrics_lib.masked_sum(mask, mask),
      loss=metrics_lib.masked_sum(metrics_lib.softmax_cross_entropy(logits, labels), mask),
      # Non-finite scores predict no class and count as wrong (support = true class counts).
      confusion=metrics_lib.confusion_matrix(labels, metrics_lib.predicted_class(logits), mask,
                                             num_classes),
      support=metrics_lib.masked_sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.int32), mask),
      nonfinite=metrics_lib.masked_sum(~metrics_lib.finite_rows(logits), mask),
      logits=logits,
      **{f"top{k}": metrics_lib.masked_sum(c, mask) for k, c in correct.items()},
    )

  return jax.jit(step)


def protocol_step(config: ml_collections.ConfigDict, name: str, model: Any) -> Callable[..., dict]:
  """`make_eval_step` of `model` with the views per call of protocol `config.evals[name]`."""
  return make_eval_step(model, config.model.num_classes,
                        config.evals[name].get("views_per_step"))


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
  progress = metrics_lib.Progress(num_batches, unit="batches")

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
    mean_class_accuracy=metrics_lib.mean_class_accuracy(confusion, support),
    loss=totals["loss"] / count,
    num_videos=int(count),
    nonfinite=int(totals["nonfinite"]),
    confusion=confusion,
  )
  if with_predictions:
    result["predictions"] = sorted(predictions, key=lambda r: r["index"])
  return result


def protocol_views(config: ml_collections.ConfigDict, name: str) -> tuple[int, int]:
  """(clips, crops) of protocol `name` of `config.evals`, with a clear error if it is missing."""
  evals = config.get("evals")
  if not evals or name not in evals:
    raise ValueError(f"No eval protocol {name!r}: config.evals has {sorted(evals or {})}; "
                     "expected entries like val_1x1=dict(clips=1, crops=1).")
  entry = evals[name]
  for key in ("clips", "crops"):
    if not isinstance(entry.get(key), int) or entry[key] < 1:
      raise ValueError(f"config.evals.{name}.{key} must be a positive int, got {entry.get(key)!r}.")
  return entry.clips, entry.crops


def protocol_input(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.input` with the overrides of `config.evals[name]` (split, clip_sampling)."""
  entry = config.evals[name]
  input_cfg = config.input.copy_and_resolve_references()
  if entry.get("split"):
    input_cfg.eval_split = entry.split
  if entry.get("clip_sampling"):
    input_cfg.test_clip_sampling = entry.clip_sampling
  return input_cfg


def run_protocol(config: ml_collections.ConfigDict, name: str, eval_step: Callable[..., dict],
                 variables: Mapping[str, Any], mesh: jax.sharding.Mesh, *,
                 with_predictions: bool = False) -> dict[str, Any]:
  """Evaluates `variables` with protocol `config.evals[name]` on its split (one full pass).

  `eval_step` is `protocol_step(config, name, model)`, built once by the caller.
  """
  clips, crops = protocol_views(config, name)
  input_cfg = protocol_input(config, name)
  num_batches = pipeline.num_eval_batches(input_cfg, process_count=jax.process_count())
  eval_iter = pipeline.make_eval_iter(
    input_cfg, process_index=jax.process_index(), process_count=jax.process_count(),
    clips=clips, crops=crops)
  logging.info("eval %s: split %s, %d clips x %d crops (%s), %d batches of %d videos", name,
               input_cfg.eval_split, clips, crops, input_cfg.test_clip_sampling, num_batches,
               input_cfg.eval_batch_size)
  return evaluate_state(eval_step, variables, eval_iter, mesh=mesh,
                        num_classes=config.model.num_classes, num_batches=num_batches,
                        with_predictions=with_predictions)


def training_protocol(config: ml_collections.ConfigDict) -> str:
  """The protocol validated during training: `config.train_eval`, else the one with fewest views."""
  if not config.get("evals"):
    raise ValueError("config.evals is empty; add e.g. val_1x1=dict(clips=1, crops=1).")
  if config.get("train_eval"):
    protocol_views(config, config.train_eval)
    return config.train_eval
  return min(config.evals, key=lambda n: (np.prod(protocol_views(config, n)), n))


def make_validator(config: ml_collections.ConfigDict, model: Any,
                   mesh: jax.sharding.Mesh) -> EvalFn:
  """The in-training validation (`train.EvalFn`): scalar metrics of `training_protocol(config)`.

  The eval step is built here, once per run, and reused by every validation.
  """
  name = training_protocol(config)
  eval_step = protocol_step(config, name, model)

  def validate(state: Any, step: int) -> dict[str, float]:
    variables = dict(params=state.params, batch_stats=state.batch_stats)
    result = run_protocol(config, name, eval_step, variables, mesh)
    logging.info("validation %s at step %d: top1 %.4f top5 %.4f mean-class %.4f", name, step,
                 result["top1"], result["top5"], result["mean_class_accuracy"])
    return {k: float(v) for k, v in result.items() if np.ndim(v) == 0}

  return validate


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, protocol: str = "all",
             checkpoint: str = "latest", with_predictions: bool = False,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, dict[str, Any]]:
  """Restores the model state from `workdir` and runs eval protocols, writing their results.

  Args:
    config: the training config; reads model, input, checkpoint and evals.
    workdir: training workdir with `checkpoints/`; results are written next to them.
    protocol: a name in `config.evals`, or 'all'.
    checkpoint: 'latest' or 'best' (by validation top-1).
    with_predictions: also write per-video predictions as JSONL.
    mesh: defaults to all devices; the checkpoint may come from any device count.

  Returns:
    {protocol name: evaluate_state result}.
  """
  mesh = mesh or sharding.make_mesh()
  names = sorted(config.evals) if protocol == "all" else [protocol]
  for name in names:
    protocol_views(config, name)  # Fail on a bad protocol before the slow restore.
  consistency.check(config, train=False, eval_protocols=names)
  step = inference.choose_step(config, workdir, checkpoint)
  # Restored as plain dicts, so the optimizer config need not match the one trained with.
  state, step = checkpointing.restore_state_only(workdir, None, mesh, step=step)
  variables = dict(params=state["params"], batch_stats=state["batch_stats"])
  model = build_model(config.model)
  class_names = records.read_info(config.input.data_dir).class_names
  results = {}
  for name in names:
    result = run_protocol(config, name, protocol_step(config, name, model), variables, mesh,
                          with_predictions=with_predictions)
    clips, crops = protocol_views(config, name)
    path = reporting.write_results(workdir, name, step, result, class_names=class_names,
                                   protocol=dict(clips=clips, crops=crops, checkpoint=checkpoint))
    logging.info("eval %s step %d (%dx%d): top1 %.4f top5 %.4f mean-class %.4f on %d videos "
                 "-> %s", name, step, clips, crops, result["top1"], result["top5"],
                 result["mean_class_accuracy"], result["num_videos"], path)
    if result["nonfinite"]:
      logging.warning("eval %s step %d: %d of %d videos have NaN/Inf scores, counted as wrong.",
                      name, step, result["nonfinite"], result["num_videos"])
    results[name] = result
  return results

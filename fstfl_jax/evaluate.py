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

Outputs per protocol (process 0 writes): `<workdir>/eval_<name>_step<N>.json` (top-1, top-5,
mean class accuracy, loss, video count, confusion matrix), `eval_<name>_step<N>_confusion.png`
and, on request, `eval_<name>_step<N>_predictions.jsonl` (one line per video with the logits of
every class, the input of `fstfl_jax.ensemble`; format in `fstfl_jax.scores`).
"""

import collections
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from fstfl_jax import metrics as metrics_lib
from fstfl_jax import scores
from fstfl_jax import sharding
from fstfl_jax import storage
from fstfl_jax.models import build_model

Batch = Mapping[str, np.ndarray]

TOP_K = (1, 5)
# Eval steps dispatched before the host blocks on the oldest one. On CPU, tens of collective
# computations in flight without waiting can deadlock; 2 keeps the device busy while the host
# fetches the previous result (docs/training.md#evaluation-loop).
MAX_IN_FLIGHT = 2
# Above this many classes the confusion plot carries no tick labels (they would overlap).
MAX_LABELLED_CLASSES = 30


# Jitted eval steps by (model, preprocess, options), so validations during training (which
# rebuild the model from its config) reuse the compiled step.
_STEP_CACHE: dict[tuple, Callable[..., dict]] = {}


def _model_key(model: Any) -> Any:
  """The module itself, or its repr when it holds unhashable attributes (a ConfigDict).

  A linen module's repr lists all of its attributes, so equal reprs build the same function.
  """
  try:
    hash(model)
    return model
  except TypeError:
    return type(model), repr(model)


def make_eval_step(model: Any, num_classes: int, views_per_step: int | None,
                   with_logits: bool) -> Callable[..., dict]:
  """The jitted step `(variables, batch) -> sums` for one model; compiled once per batch shape.

  `batch` holds global arrays sharded `P('data')` on the video axis: video uint8
  [B, V, T, S, S, 3], label int32 [B], mask bool [B]. `views_per_step` views of every video
  are folded into one model call of B * views_per_step clips (None: all V at once); fewer views
  per call bound activation memory for 10x3 protocols.

  Returns (replicated) sums over unmasked videos: count, loss, top1, top5, nonfinite (videos
  with a NaN/Inf score), confusion [K, K] and support [K] (videos per class); with
  `with_logits` also the view-averaged logits [B, K] (sharded like the batch).
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
    out = dict(
      count=metrics_lib.masked_sum(mask, mask),
      loss=metrics_lib.masked_sum(metrics_lib.softmax_cross_entropy(logits, labels), mask),
      # Non-finite scores predict no class and count as wrong (support = true class counts).
      confusion=metrics_lib.confusion_matrix(labels, metrics_lib.predicted_class(logits), mask,
                                             num_classes),
      support=metrics_lib.masked_sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.int32), mask),
      nonfinite=metrics_lib.masked_sum(~metrics_lib.finite_rows(logits), mask),
      **{f"top{k}": metrics_lib.masked_sum(c, mask) for k, c in correct.items()},
    )
    if with_logits:
      out["logits"] = logits
    return out

  key = (_model_key(model), num_classes, views_per_step, with_logits)
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = jax.jit(step)
  return _STEP_CACHE[key]


def _check_batch(batch: Batch, i: int, num_classes: int) -> None:
  for key in ("video", "label", "mask", "index"):
    if key not in batch:
      raise ValueError(f"Eval batch {i} has no {key!r} entry; it has {sorted(batch)}.")
  video = batch["video"]
  if video.ndim != 6 or video.shape[-1] != 3:
    raise ValueError(f"Eval batch {i}: video must be [B, V, T, S, S, 3], got {video.shape}.")
  b = video.shape[0]
  for key in ("label", "mask", "index"):
    if batch[key].shape != (b,):
      raise ValueError(f"Eval batch {i}: {key} must have shape ({b},), got {batch[key].shape}.")
  labels = batch["label"][batch["mask"]]
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"Eval batch {i}: labels outside [0, {num_classes}): "
                     f"{sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))}.")


def evaluate_state(model: Any, variables: Mapping[str, Any], eval_iter: Iterator[Batch], *,
                   mesh: jax.sharding.Mesh, num_classes: int, num_batches: int,
                   views_per_step: int | None = None,
                   with_predictions: bool = False, log_every: int = 50) -> dict[str, Any]:
  """Evaluates `variables` on `num_batches` batches of `eval_iter`.

  Args:
    model: linen module, `model.apply(variables, video [N, T, S, S, 3] uint8, train=False)`.
    variables: {'params', 'batch_stats'}, replicated on `mesh`.
    eval_iter: per-process batches (numpy) with video uint8 [B, V, T, S, S, 3], label int32 [B],
      mask bool [B] (False on padding), index int32 [B] (video id in the split) and,
      optionally, video_id str [B] (the record ids, written with the predictions).
    mesh: the `('data',)` mesh; B must be divisible by its device count per process.
    num_classes: K.
    num_batches: batches to read (the iterator may be longer, e.g. repeating).
    views_per_step: views per model call (None: all views of the batch at once).
    with_predictions: also return per-video predictions (gathered to every process).
    log_every: batches between progress lines.

  Returns:
    dict with top1, top5, mean_class_accuracy, loss (cross-entropy of the averaged logits),
    num_videos, nonfinite (videos with a NaN/Inf score, counted as wrong), confusion (np.int64
    [K, K]) and, with `with_predictions`, `predictions`: a list of `scores.prediction_rows` per
    video (index, video_id when the batches carry one, label, top5, top5_logits, logits of
    every class).
  """
  step_fn = make_eval_step(model, num_classes, views_per_step, with_predictions)
  totals = collections.Counter()
  confusion = np.zeros((num_classes, num_classes), np.int64)
  support = np.zeros(num_classes, np.int64)
  predictions: list[dict[str, Any]] = []
  seen_indices: set[int] = set()
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
      _check_batch(batch, i, num_classes)
      if batch["video"].shape[0] * jax.process_count() % mesh.size:
        raise ValueError(
          f"Eval batch {i} has {batch['video'].shape[0]} videos per process, which does not split "
          f"over the {mesh.size} devices; make input.eval_batch_size a multiple of {mesh.size}.")
      # Duplicate ids would count a video twice (a pipeline bug): checked per process, whose
      # slices of the split are disjoint.
      valid_ids = batch["index"][batch["mask"]].tolist()
      repeated = seen_indices.intersection(valid_ids)
      if repeated or len(set(valid_ids)) != len(valid_ids):
        raise ValueError(f"Eval batch {i} repeats video indices "
                         f"{sorted(repeated) or sorted(valid_ids)[:10]}; each must count once.")
      seen_indices.update(valid_ids)
      inputs = sharding.to_global(
        {k: batch[k] for k in ("video", "label", "mask", "index")}, mesh)
      out = step_fn(variables, inputs)
      if with_predictions:
        out.update(label=inputs["label"], index=inputs["index"], mask=inputs["mask"])
        if "video_id" in batch:
          out["video_id"] = batch["video_id"]
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


def save_confusion_png(confusion: np.ndarray, path: str, *, title: str = "",
                       class_names: Sequence[str] | None = None) -> None:
  """Row-normalised confusion matrix [K, K] as a PNG (rows: true class, columns: predicted).

  With at most `MAX_LABELLED_CLASSES` classes the axes carry the class names (or ids). The PNG
  text chunk `num_classes` records K.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  confusion = np.asarray(confusion, np.float64)
  k = confusion.shape[0]
  if confusion.shape != (k, k):
    raise ValueError(f"Confusion matrix must be square, got {confusion.shape}.")
  if class_names is not None and len(class_names) != k:
    raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix.")
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  side = float(np.clip(k * 0.35, 5, 16))  # Inches of the matrix; names need room too.
  fig, ax = plt.subplots(figsize=(side + 3, side + 2))
  image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  if k <= MAX_LABELLED_CLASSES:
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100, metadata={"Title": title, "num_classes": str(k)})
  plt.close(fig)


def write_results(workdir: str, name: str, step: int, result: Mapping[str, Any], *,
                  protocol: Mapping[str, Any] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
  """Writes the JSON summary, the confusion PNG and any predictions (process 0 only).

  `workdir` may be local or `gs://`. Returns the path of the JSON summary.
  """
  stem = os.fspath(storage.path(workdir) / f"eval_{name}_step{step}")
  if jax.process_index() != 0:
    return stem + ".json"
  summary = {k: v for k, v in result.items() if k not in ("confusion", "predictions")}
  summary = dict(name=name, step=step, protocol=dict(protocol or {}), **summary,
                 confusion=np.asarray(result["confusion"]).tolist())
  storage.write_json(stem + ".json", summary, indent=1)
  save_confusion_png(result["confusion"], stem + "_confusion.png", class_names=class_names,
                     title=f"{name} step {step}: top-1 {100 * result['top1']:.2f}%")
  if "predictions" in result:
    storage.write_text(stem + "_predictions.jsonl",
                       "".join(json.dumps(row) + "\n" for row in result["predictions"]))
  return stem + ".json"


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


def run_protocol(config: ml_collections.ConfigDict, name: str, model: Any,
                 variables: Mapping[str, Any], mesh: jax.sharding.Mesh, *,
                 with_predictions: bool = False) -> dict[str, Any]:
  """Evaluates `variables` with protocol `config.evals[name]` on its split (one full pass)."""
  clips, crops = protocol_views(config, name)
  input_cfg = protocol_input(config, name)
  num_batches = pipeline.num_eval_batches(input_cfg, process_count=jax.process_count())
  eval_iter = pipeline.make_eval_iter(
    input_cfg, process_index=jax.process_index(), process_count=jax.process_count(),
    clips=clips, crops=crops)
  logging.info("eval %s: split %s, %d clips x %d crops (%s), %d batches of %d videos", name,
               input_cfg.eval_split, clips, crops, input_cfg.test_clip_sampling, num_batches,
               input_cfg.eval_batch_size)
  return evaluate_state(model, variables, eval_iter, mesh=mesh,
                        num_classes=config.model.num_classes, num_batches=num_batches,
                        views_per_step=config.evals[name].get("views_per_step"),
                        with_predictions=with_predictions)


def training_protocol(config: ml_collections.ConfigDict) -> str:
  """The protocol validated during training: `config.train_eval`, else the one with fewest views."""
  if not config.get("evals"):
    raise ValueError("config.evals is empty; add e.g. val_1x1=dict(clips=1, crops=1).")
  if config.get("train_eval"):
    protocol_views(config, config.train_eval)
    return config.train_eval
  return min(config.evals, key=lambda n: (np.prod(protocol_views(config, n)), n))


def validate(config: ml_collections.ConfigDict, state: Any, mesh: jax.sharding.Mesh,
             step: int) -> dict[str, float]:
  """In-training validation (`train.EvalFn`): scalar metrics of `training_protocol(config)`."""
  name = training_protocol(config)
  variables = dict(params=state.params, batch_stats=state.batch_stats)
  result = run_protocol(config, name, build_model(config.model), variables, mesh)
  logging.info("validation %s at step %d: top1 %.4f top5 %.4f mean-class %.4f", name, step,
               result["top1"], result["top5"], result["mean_class_accuracy"])
  return {k: float(v) for k, v in result.items() if np.ndim(v) == 0}


def checkpoint_step(config: ml_collections.ConfigDict, workdir: str, which: str) -> int | None:
  """'latest' -> None (restore takes the latest), 'best' -> best step by validation top-1."""
  if which == "latest":
    return None
  if which != "best":
    raise ValueError(f"checkpoint={which!r}; expected 'latest' or 'best'.")
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(workdir), config.checkpoint,
                                       read_only=True)
  best = manager.best_step()
  manager.close()
  if best is None:
    raise checkpointing.CheckpointNotFoundError(
      f"No checkpoint with validation metrics in {workdir}: cannot pick the best one; use "
      "checkpoint='latest'.")
  return best


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
  step = checkpoint_step(config, workdir, checkpoint)
  # Restored as plain dicts, so the optimizer config need not match the one trained with.
  state, step = checkpointing.restore_state_only(workdir, None, mesh, step=step)
  variables = dict(params=state["params"], batch_stats=state["batch_stats"])
  model = build_model(config.model)
  class_names = records.read_info(config.input.data_dir).class_names
  results = {}
  for name in names:
    result = run_protocol(config, name, model, variables, mesh,
                          with_predictions=with_predictions)
    clips, crops = protocol_views(config, name)
    path = write_results(workdir, name, step, result, class_names=class_names,
                         protocol=dict(clips=clips, crops=crops, checkpoint=checkpoint))
    logging.info("eval %s step %d (%dx%d): top1 %.4f top5 %.4f mean-class %.4f on %d videos "
                 "-> %s", name, step, clips, crops, result["top1"], result["top5"],
                 result["mean_class_accuracy"], result["num_videos"], path)
    if result["nonfinite"]:
      logging.warning("eval %s step %d: %d of %d videos have NaN/Inf scores, counted as wrong.",
                      name, step, result["nonfinite"], result["num_videos"])
    results[name] = result
  return results

r"""Ensemble of trained models from their saved per-video scores (e.g. the paper's 8f + 16f row).

  python -m fstfl_jax.main --config configs/sthv1.py:frames=8 --workdir runs/f8 --mode eval \
      --eval_protocol val_1x1 --eval_predictions          # likewise for runs/f16
  python -m fstfl_jax.ensemble --workdirs runs/f8,runs/f16 --protocol val_1x1 \
      [--weights 1,1] [--average softmax|logits] [--json runs/ensemble_val_1x1.json]

Each member's `eval_<protocol>_step<N>_predictions.jsonl` (highest N, `fstfl_jax.scores`) must
cover the same videos with the same labels and class count. The ensemble score of a video is
the weighted mean of the members' softmax probabilities (default) or raw logits; top-1, top-5,
mean class accuracy, loss and the confusion matrix follow `fstfl_jax.evaluate`'s summary. The
members' params and GMACs per clip (from each workdir's config.json, counted as
`fstfl_jax.tools.model_info` does) are summed, which is how the paper reports ensemble rows.
"""

import json
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from etils import epath
import ml_collections
import numpy as np

from fstfl_jax import cli
from fstfl_jax import metrics as metrics_lib
from fstfl_jax import scores
from fstfl_jax import storage
from fstfl_jax.tools import model_info

AVERAGES = ("softmax", "logits")

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Comma-separated workdirs of the members.")
_PROTOCOL = flags.DEFINE_string("protocol", "val_1x1", "Eval protocol whose scores are combined.")
_WEIGHTS = flags.DEFINE_list("weights", None, "One weight per workdir (default: equal).")
_AVERAGE = flags.DEFINE_enum("average", "softmax", AVERAGES,
                             "Average softmax probabilities or raw logits.")
_JSON = flags.DEFINE_string("json", None, "Write the result here (local path or gs://).")
_COST = flags.DEFINE_bool("cost", True, "Count the members' params and GMACs (needs config.json).")



class EnsembleError(cli.UserError, ValueError):
  """Members that cannot be averaged, or bad weights; the message names the files."""

def check_members(members: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
  """Raises a one-line ValueError unless all members score the same videos, labels and classes.

  Args:
    members: `scores.read_scores` results.
    names: what to call each member in the message (its file).
  """
  first, name0 = members[0], names[0]
  for member, name in zip(members[1:], names[1:]):
    if member["logits"].shape[1] != first["logits"].shape[1]:
      raise EnsembleError(f"{name} scores {member['logits'].shape[1]} classes, {name0} "
                          f"{first['logits'].shape[1]}: members must share one label space.")
    if not np.array_equal(member["index"], first["index"]):
      extra = sorted(set(member["index"].tolist()) ^ set(first["index"].tolist()))
      raise EnsembleError(f"{name} and {name0} cover different videos ({len(member['index'])} vs "
                          f"{len(first['index'])}; e.g. index {extra[:5]}): evaluate both on the "
                          "same split.")
    if (member["video_id"] is not None and first["video_id"] is not None
        and member["video_id"] != first["video_id"]):
      bad = next(i for i, (a, b) in enumerate(zip(member["video_id"], first["video_id"]))
                 if a != b)
      raise EnsembleError(f"{name} and {name0} differ at video index {int(first['index'][bad])}: "
                          f"video_id {member['video_id'][bad]!r} vs {first['video_id'][bad]!r}; "
                          "the data was built differently.")
    if not np.array_equal(member["label"], first["label"]):
      bad = int(np.flatnonzero(member["label"] != first["label"])[0])
      raise EnsembleError(f"{name} and {name0} disagree on the label of video index "
                          f"{int(first['index'][bad])} ({member['label'][bad]} vs "
                          f"{first['label'][bad]}): different label spaces or class orders.")


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def combine(logits: Sequence[np.ndarray], weights: Sequence[float] | None = None,
            average: str = "softmax") -> np.ndarray:
  """Weighted mean over members of [N, K] scores: softmax probabilities or raw logits."""
  if average not in AVERAGES:
    raise EnsembleError(f"average={average!r}; expected one of {AVERAGES}.")
  weights = np.ones(len(logits)) if weights is None else np.asarray(weights, np.float64)
  if len(weights) != len(logits) or np.any(weights < 0) or weights.sum() <= 0:
    raise EnsembleError(f"weights {weights.tolist()}: need {len(logits)} non-negative values "
                        "with a positive sum.")
  parts = [_softmax(x) if average == "softmax" else x for x in logits]
  return np.tensordot(weights / weights.sum(), np.stack(parts), axes=1)


def summarize(score: np.ndarray, labels: np.ndarray, average: str) -> dict[str, Any]:
  """top1, top5, mean_class_accuracy, loss, num_videos and confusion of [N, K] scores.

  The loss is the cross-entropy of the ensemble's distribution: -log of the averaged
  probability of the label (softmax average) or of the softmax of the averaged logits.
  """
  k = score.shape[1]
  mask = np.ones(len(labels), bool)
  correct = metrics_lib.topk_correct(score, labels, (1, 5))
  probs = score if average == "softmax" else _softmax(score)
  confusion = np.asarray(metrics_lib.confusion_matrix(labels, np.argmax(score, -1), mask, k))
  return dict(
    top1=float(np.mean(correct[1])),
    top5=float(np.mean(correct[5])),
    mean_class_accuracy=metrics_lib.mean_class_accuracy(confusion),
    loss=float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-30)))),
    num_videos=int(len(labels)),
    confusion=confusion.astype(np.int64).tolist(),
  )


def member_cost(workdir: str) -> dict[str, Any]:
  """Params and GMACs per clip of the model in `workdir/config.json` (at its crop size)."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: the cost comes from the training config "
                            "(or pass --nocost).")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  info = model_info.model_info(config.model, config.input.crop_size)
  return dict(model=info["model"], num_frames=info["num_frames"], size=info["size"],
              params=info["params"], gmacs=info["gflops"])


def ensemble(workdirs: Sequence[str], protocol: str, *, weights: Sequence[float] | None = None,
             average: str = "softmax", with_cost: bool = True) -> dict[str, Any]:
  """Combines the members' saved scores for `protocol` (module docstring); returns the summary."""
  if len(workdirs) < 2:
    raise EnsembleError(f"An ensemble needs at least 2 workdirs, got {list(workdirs)}.")
  if weights is not None and len(weights) != len(workdirs):
    raise EnsembleError(f"{len(weights)} weights for {len(workdirs)} workdirs.")
  files = [scores.score_file(w, protocol) for w in workdirs]
  members = [scores.read_scores(f) for f in files]
  check_members(members, [str(f) for f in files])
  score = combine([m["logits"] for m in members], weights, average)
  result = dict(name=f"ensemble_{protocol}", protocol=dict(name=protocol, average=average,
                                                           weights=list(weights or [])))
  result.update(summarize(score, members[0]["label"], average))
  rows = [dict(workdir=str(w), scores=str(f)) for w, f in zip(workdirs, files)]
  if with_cost:
    costs = [member_cost(w) for w in workdirs]
    for row, cost in zip(rows, costs):
      row.update(cost)
    result["params"] = sum(c["params"] for c in costs)
    result["gmacs"] = sum(c["gmacs"] for c in costs)
  result["members"] = rows
  return result


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  weights = None
  if _WEIGHTS.value:
    try:
      weights = [float(w) for w in _WEIGHTS.value]
    except ValueError:
      raise app.UsageError(f"--weights={','.join(_WEIGHTS.value)}: expected numbers.") from None
  result = ensemble(_WORKDIRS.value, _PROTOCOL.value, weights=weights, average=_AVERAGE.value,
                    with_cost=_COST.value)
  for member in result["members"]:
    cost = (f"  {member['model']} {member['num_frames']}f: {member['params'] / 1e6:.2f} M params, "
            f"{member['gmacs']:.2f} GMACs" if "params" in member else "")
    print(f"{member['scores']}{cost}")
  line = (f"ensemble {_PROTOCOL.value} ({_AVERAGE.value} average of {len(result['members'])}): "
          f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  mean class "
          f"{100 * result['mean_class_accuracy']:.2f}%  ({result['num_videos']} videos)")
  if "params" in result:
    line += f"  {result['params'] / 1e6:.2f} M params, {result['gmacs']:.2f} GMACs per clip"
  print(line, flush=True)
  if _JSON.value:
    storage.write_json(_JSON.value, result, indent=1)


def run() -> None:
  """Console script `fstfl-ensemble`."""
  flags.mark_flags_as_required(["workdirs"])
  cli.run(main)


if __name__ == "__main__":
  run()

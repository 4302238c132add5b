r"""Ensemble of trained models from their saved per-video scores (e.g. the paper's 8f + 16f row).

  fstfl-train --config configs/sthv1.py:frames=8 --workdir runs/f8 --mode eval \
      --eval_protocol val_1x1 --eval_predictions          # likewise for runs/f16
  fstfl-ensemble --workdirs runs/f8,runs/f16 --protocol val_1x1 \
      [--weights 1,1] [--average softmax|logits] [--json runs/ensemble_val_1x1.json]
  (the same as `python -m fstfl_jax.apps.ensemble ...`)

Each member's `eval_<protocol>_step<N>_predictions.jsonl` (highest N,
`fstfl_jax.evaluation.scores`) must cover the same videos with the same labels and class count.
The ensemble score of a video is the weighted mean of the members' softmax probabilities
(default) or raw logits; top-1, top-5, mean class accuracy, loss and the confusion matrix follow
the eval summary (`fstfl_jax.evaluation.evaluate`). The
members' params and GMACs per clip (from each workdir's config.json, counted as
`fstfl_jax.tools.model_info` does) are summed, which is how the paper reports ensemble rows.
"""

import json
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from etils import epath

from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.apps import inference
from fstfl_jax.evaluation import scores
from fstfl_jax.tools import model_info
from fstfl_jax.training import metrics as metrics_lib

PROG = "fstfl-ensemble"
AVERAGES = ("softmax", "logits")


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


def combine(logits: Sequence[np.ndarray], weights: Sequence[float] | None = None,
            average: str = "softmax") -> np.ndarray:
  """Weighted mean over members of [N, K] scores: softmax probabilities or raw logits."""
  if average not in AVERAGES:
    raise EnsembleError(f"average={average!r}; expected one of {AVERAGES}.")
  weights = np.ones(len(logits)) if weights is None else np.asarray(weights, np.float64)
  if len(weights) != len(logits) or np.any(weights < 0) or weights.sum() <= 0:
    raise EnsembleError(f"weights {weights.tolist()}: need {len(logits)} non-negative values "
                        "with a positive sum.")
  parts = [inference.softmax(x) if average == "softmax" else x for x in logits]
  return np.tensordot(weights / weights.sum(), np.stack(parts), axes=1)


def summarize(score: np.ndarray, labels: np.ndarray, average: str) -> dict[str, Any]:
  """top1, top5, mean_class_accuracy, loss, num_videos and confusion of [N, K] scores.

  The loss is the cross-entropy of the ensemble's distribution: -log of the averaged
  probability of the label (softmax average) or of the softmax of the averaged logits.
  """
  k = score.shape[1]
  mask = np.ones(len(labels), bool)
  correct = metrics_lib.topk_correct(score, labels, (1, 5))
  probs = score if average == "softmax" else inference.softmax(score)
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


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-ensemble` (see the module docstring)."""
  flags.DEFINE_list("workdirs", None, "Comma-separated workdirs of the members.", flag_values=fv,
                    required=True)
  flags.DEFINE_string("protocol", "val_1x1", "Eval protocol whose scores are combined.",
                      flag_values=fv)
  flags.DEFINE_list("weights", None, "One weight per workdir (default: equal).", flag_values=fv)
  flags.DEFINE_enum("average", "softmax", AVERAGES, "Average softmax probabilities or raw "
                    "logits.", flag_values=fv)
  flags.DEFINE_string("json", None, "Write the result here (local path or gs://).",
                      flag_values=fv)
  flags.DEFINE_bool("cost", True, "Count the members' params and GMACs (needs config.json).",
                    flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  weights = None
  if args.weights:
    try:
      weights = [float(w) for w in args.weights]
    except ValueError:
      cli.usage_error(PROG, f"--weights={','.join(args.weights)}: expected numbers.")
  result = ensemble(args.workdirs, args.protocol, weights=weights, average=args.average,
                    with_cost=args.cost)
  for member in result["members"]:
    cost = (f"  {member['model']} {member['num_frames']}f: {member['params'] / 1e6:.2f} M params, "
            f"{member['gmacs']:.2f} GMACs" if "params" in member else "")
    print(f"{member['scores']}{cost}")
  line = (f"ensemble {args.protocol} ({args.average} average of {len(result['members'])}): "
          f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  mean class "
          f"{100 * result['mean_class_accuracy']:.2f}%  ({result['num_videos']} videos)")
  if "params" in result:
    line += f"  {result['params'] / 1e6:.2f} M params, {result['gmacs']:.2f} GMACs per clip"
  print(line, flush=True)
  if args.json:
    storage.write_json(args.json, result, indent=1)
  return 0


def run() -> None:
  """Console script `fstfl-ensemble`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

"""tsn vs gsf vs fstfl with the same budget on the offline demo data (motion-only classes).

  fstfl-make-demo --out demo_data
  python -m benchmarks.motion_ablation --workdir workdirs/ablation [--models tsn,gsf,fstfl]
      [--seeds 0-4] [--epochs E] [--curves] [--set optim.base_lr=0.05 ...]
      [--data_dir demo_data] [--json ablation.json]

Each model trains with `configs/demo.py:model=<name>` (same data, steps and recipe) once per
seed (the seed sets both the initialisation, `train.seed`, and the data order and augmentation,
`input.shuffle_seed`), then its final checkpoint is evaluated under every demo protocol. Without
--epochs and --set, `--models fstfl --seeds 0-4` trains exactly what `scripts/demo.sh` trains
with `--config.train.seed=S --config.input.shuffle_seed=S`, so it measures the demo's
distribution over seeds (seed 0 is the demo's own run). --curves also validates after every
epoch (val_1x1), as the demo does, and prints the per-epoch curves.

Printed per model: mean, sample standard deviation, min and max over seeds of every metric; the
per-class accuracy (recall) under val_1x1, mean over seeds; and the confusion among the four
translation classes (move left / right / up / down), summed over seeds, so an axis the model
cannot tell apart shows as a 2x2 block at chance. The paper's claim is fstfl > gsf > tsn on
motion-defined classes; the tables report what is measured, with the seed spread next to it.
Existing workdirs (`<workdir>/<model>/seed<s>`) resume, so an interrupted ablation continues.
"""

import ast
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from absl import logging

from configs import demo
from data_pipelines import cli
from data_pipelines.records import reading
from fstfl_jax.apps import experiment
from fstfl_jax.training import logs

PROG = "benchmarks.motion_ablation"

PER_CLASS_PROTOCOL = "val_1x1"
# The translation classes whose mutual confusion shows an axis the model does not resolve.
TRANSLATIONS = ("00_move_left", "01_move_right", "02_move_up", "03_move_down")


def parse_seeds(items: list[str]) -> list[int]:
  """['0-4'] -> [0, 1, 2, 3, 4]; ['0', '2', '5-6'] -> [0, 2, 5, 6] (order kept, no repeats)."""
  seeds: list[int] = []
  for item in items:
    first, sep, last = item.strip().partition("-")
    values = range(int(first), int(last) + 1) if sep else [int(first)]
    seeds += [s for s in values if s not in seeds]
  if not seeds:
    raise ValueError("--seeds is empty.")
  return seeds


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """`section.key=value` (a Python literal, else a string) set in place; unknown keys raise."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set expects key=value, got {item!r}.")
    *path, leaf = key.strip().split(".")
    node = config
    for part in path:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"--set {key}: no such config key.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node[leaf] = value


def make_config(name: str, seed: int, data_dir: str, epochs: int | None,
                overrides: list[str]) -> ml_collections.ConfigDict:
  """The demo config of model `name` with seed `seed` (init and data order)."""
  config = demo.get_config(f"model={name}")
  if epochs is not None:
    config.optim.num_epochs = epochs
  config.input.data_dir = data_dir
  config.train.seed = config.input.shuffle_seed = seed
  apply_overrides(config, overrides)
  return config


def val_curve(workdir: str) -> list[float]:
  """val top-1 after each in-training validation, from the run's metrics.jsonl."""
  path = os.path.join(workdir, logs.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  by_step = {r["step"]: r["val/top1"] for r in rows if "val/top1" in r}
  return [by_step[s] for s in sorted(by_step)]


def run(config: ml_collections.ConfigDict, workdir: str, curves: bool) -> dict[str, Any]:
  """Trains and evaluates one config; metrics per protocol, per-class recall, confusion."""
  t0 = time.perf_counter()
  experiment.train_and_evaluate(config, workdir, with_eval=curves)
  seconds = time.perf_counter() - t0
  results = experiment.evaluate_checkpoint(config, workdir)
  confusion = np.asarray(results[PER_CLASS_PROTOCOL]["confusion"], np.int64)
  return dict(model=config.model.name, seed=config.train.seed, train_seconds=seconds,
              val_curve=val_curve(workdir) if curves else [],
              per_class=(np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist(),
              confusion=confusion.tolist(),
              **{f"{p}/{k}": float(r[k]) for p, r in results.items()
                 for k in ("top1", "top5", "mean_class_accuracy")})


def _stats(values: Any) -> dict[str, float]:
  values = np.asarray(values, np.float64)
  return dict(mean=float(values.mean()),
              std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              min=float(values.min()), max=float(values.max()))


def summarize(rows: list[dict]) -> list[dict]:
  """Per model: mean, sample std, min and max over seeds of every metric; per-class recall
  mean/std; the per-epoch validation curve's statistics; the confusion summed over seeds."""
  out = []
  for model in dict.fromkeys(r["model"] for r in rows):
    runs = [r for r in rows if r["model"] == model]
    summary: dict[str, Any] = dict(model=model, seeds=[r["seed"] for r in runs])
    for k in [k for k in runs[0] if "/" in k] + ["train_seconds"]:
      summary[k] = _stats([r[k] for r in runs])
    per_class = np.array([r["per_class"] for r in runs])
    summary["per_class"] = dict(mean=per_class.mean(0).tolist(),
                                std=(per_class.std(0, ddof=1) if len(runs) > 1
                                     else 0 * per_class[0]).tolist())
    curves = [r["val_curve"] for r in runs if r["val_curve"]]
    length = min((len(c) for c in curves), default=0)
    summary["val_curve"] = [_stats([c[e] for c in curves]) for e in range(length)]
    summary["confusion"] = np.sum([r["confusion"] for r in runs], 0).tolist()
    out.append(summary)
  return out


def translation_confusion(confusion: Any, class_names: list[str]) -> np.ndarray:
  """[4, 5] percentages: rows = true left/right/up/down, columns = predicted left/right/up/down
  and any other class; each row sums to 100."""
  confusion = np.asarray(confusion, np.float64)
  index = [class_names.index(c) for c in TRANSLATIONS]
  block = confusion[np.ix_(index, index)]
  other = confusion[index].sum(1) - block.sum(1)
  table = np.concatenate([block, other[:, None]], 1)
  return 100 * table / np.maximum(table.sum(1, keepdims=True), 1)


def _fmt(s: dict[str, float]) -> str:
  mean, std, low, high = (100 * s[k] for k in ("mean", "std", "min", "max"))
  return f"{mean:.1f} ± {std:.1f} [{low:.1f}, {high:.1f}]"


def markdown(summaries: list[dict], class_names: list[str]) -> str:
  keys = [k for k in summaries[0] if "/" in k and k.endswith(("top1", "top5"))]
  lines = ["Mean ± sample std [min, max] over seeds, %:", "",
           "| model | seeds | train (s) | " + " | ".join(keys) + " |",
           "|---|---|---|" + "---|" * len(keys)]
  for s in summaries:
    lines.append(f"| {s['model']} | {len(s['seeds'])} | {s['train_seconds']['mean']:.0f} | "
                 + " | ".join(_fmt(s[k]) for k in keys) + " |")
  if any(s["val_curve"] for s in summaries):
    epochs = max(len(s["val_curve"]) for s in summaries)
    lines += ["", "val_1x1 top-1 after each epoch, mean ± std [min, max] over seeds, %:", "",
              "| model | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " |",
              "|---|" + "---|" * epochs]
    for s in summaries:
      cells = [_fmt(c) for c in s["val_curve"]] + [""] * (epochs - len(s["val_curve"]))
      lines.append(f"| {s['model']} | " + " | ".join(cells) + " |")
  lines += ["", f"Per-class accuracy ({PER_CLASS_PROTOCOL}, %, mean ± std over seeds):", "",
            "| class | " + " | ".join(s["model"] for s in summaries) + " |",
            "|---|" + "---|" * len(summaries)]
  for c, name in enumerate(class_names):
    lines.append(f"| {name} | " + " | ".join(
      f"{100 * s['per_class']['mean'][c]:.1f} ± {100 * s['per_class']['std'][c]:.1f}"
      for s in summaries) + " |")
  if all(c in class_names for c in TRANSLATIONS):
    short = [c.split("_", 1)[1] for c in TRANSLATIONS]
    lines += ["", f"Translations ({PER_CLASS_PROTOCOL}, all seeds pooled): % of each true "
              "class predicted as", "",
              "| model | true | " + " | ".join(short) + " | other |",
              "|---|---|" + "---|" * (len(short) + 1)]
    for s in summaries:
      table = translation_confusion(s["confusion"], class_names)
      for name, row in zip(short, table):
        lines.append(f"| {s['model']} | {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
  return "\n".join(lines)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `python -m benchmarks.motion_ablation` (see the module docstring)."""
  flags.DEFINE_string("workdir", None, "Root of the runs (<workdir>/<model>/seed<s>).",
                      flag_values=fv, required=True)
  flags.DEFINE_list("models", ["tsn", "gsf", "fstfl"], "Models to compare.", flag_values=fv)
  flags.DEFINE_list("seeds", ["0-4"], "Seeds per model: a list, ranges allowed (0-4).",
                    flag_values=fv)
  flags.DEFINE_integer("epochs", None, "Training epochs per run (default: the demo's).",
                       flag_values=fv)
  flags.DEFINE_bool("curves", False, "Validate after every epoch and print the curves.",
                    flag_values=fv)
  flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).",
                            flag_values=fv)
  flags.DEFINE_string("data_dir", "demo_data", "The demo data dir.", flag_values=fv)
  flags.DEFINE_string("json", "", "Also write runs and summaries here.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  try:
    seeds = parse_seeds(args.seeds)
    configs = [make_config(m, s, args.data_dir, args.epochs, args.set)
               for m in args.models for s in seeds]
  except (ValueError, KeyError) as e:
    cli.usage_error(PROG, str(e))
  rows = []
  for config in configs:
    model, seed = config.model.name, config.train.seed
    workdir = os.path.abspath(os.path.join(args.workdir, model, f"seed{seed}"))
    rows.append(run(config, workdir, args.curves))
    logging.info("%s seed %d: val_1x1 top-1 %.2f%%", model, seed, 100 * rows[-1]["val_1x1/top1"])
  summaries = summarize(rows)
  print(markdown(summaries, reading.read_info(args.data_dir).class_names), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(runs=rows, summary=summaries), f, indent=1)
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

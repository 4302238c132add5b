"""tsn vs gsf vs fstfl with the same budget on the offline demo data (motion-only classes).

  python -m data_pipelines.make_demo --out demo_data
  python -m benchmarks.motion_ablation --workdir workdirs/ablation [--models tsn,gsf,fstfl]
      [--seeds 0,1,2] [--epochs 3] [--data_dir demo_data] [--json ablation.json]

Each model trains with `configs/demo.py:model=<name>` (same data, steps and recipe) once per
seed (the seed sets both the initialisation, `train.seed`, and the data order and augmentation,
`input.shuffle_seed`), then its final checkpoint is evaluated under every demo protocol.
Printed: mean and sample standard deviation over seeds per model and metric, then the
per-class accuracy (recall) under val_1x1, mean over seeds. The paper's claim is
fstfl > gsf > tsn on motion-defined classes; the tables report what is measured.
Existing workdirs (`<workdir>/<model>/seed<s>`) resume, so an interrupted ablation continues.
"""

import json
import os
import time

from collections.abc import Sequence

import numpy as np
from absl import flags

from configs import demo
from data_pipelines import cli
from data_pipelines.records import reading
from fstfl_jax.apps import experiment

PROG = "benchmarks.motion_ablation"

PER_CLASS_PROTOCOL = "val_1x1"


def run(name: str, seed: int, workdir: str, epochs: int, data_dir: str) -> dict:
  """Trains and evaluates one model with one seed; metrics per protocol and per-class recall."""
  config = demo.get_config(f"model={name}")
  config.optim.num_epochs = epochs
  config.input.data_dir = data_dir
  config.train.seed = config.input.shuffle_seed = seed
  t0 = time.perf_counter()
  experiment.train_and_evaluate(config, workdir, with_eval=False)
  seconds = time.perf_counter() - t0
  results = experiment.evaluate_checkpoint(config, workdir)
  confusion = np.asarray(results[PER_CLASS_PROTOCOL]["confusion"], np.float64)
  return dict(model=name, seed=seed, train_seconds=seconds,
              per_class=(np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist(),
              **{f"{p}/{k}": float(r[k]) for p, r in results.items()
                 for k in ("top1", "top5", "mean_class_accuracy")})


def summarize(rows: list[dict]) -> list[dict]:
  """Per model: mean and sample std over seeds of every metric and of per-class recall."""
  out = []
  for model in dict.fromkeys(r["model"] for r in rows):
    runs = [r for r in rows if r["model"] == model]
    keys = [k for k in runs[0] if "/" in k] + ["train_seconds"]
    summary = dict(model=model, seeds=[r["seed"] for r in runs])
    for k in keys:
      values = np.array([r[k] for r in runs])
      summary[k] = dict(mean=float(values.mean()),
                        std=float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    per_class = np.array([r["per_class"] for r in runs])
    summary["per_class"] = dict(mean=per_class.mean(0).tolist(),
                                std=(per_class.std(0, ddof=1) if len(runs) > 1
                                     else 0 * per_class[0]).tolist())
    out.append(summary)
  return out


def markdown(summaries: list[dict], class_names: list[str]) -> str:
  keys = [k for k in summaries[0] if "/" in k]
  lines = ["| model | seeds | train (s) | " + " | ".join(keys) + " |",
           "|---|---|---|" + "---|" * len(keys)]
  for s in summaries:
    lines.append(f"| {s['model']} | {len(s['seeds'])} | {s['train_seconds']['mean']:.0f} | "
                 + " | ".join(f"{100 * s[k]['mean']:.1f} ± {100 * s[k]['std']:.1f}"
                              for k in keys) + " |")
  lines += ["", f"Per-class accuracy ({PER_CLASS_PROTOCOL}, %, mean ± std over seeds):", "",
            "| class | " + " | ".join(s["model"] for s in summaries) + " |",
            "|---|" + "---|" * len(summaries)]
  for c, name in enumerate(class_names):
    lines.append(f"| {name} | " + " | ".join(
      f"{100 * s['per_class']['mean'][c]:.1f} ± {100 * s['per_class']['std'][c]:.1f}"
      for s in summaries) + " |")
  return "\n".join(lines)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `python -m benchmarks.motion_ablation` (see the module docstring)."""
  flags.DEFINE_string("workdir", None, "Root of the runs (<workdir>/<model>/seed<s>).",
                      flag_values=fv, required=True)
  flags.DEFINE_list("models", ["tsn", "gsf", "fstfl"], "Models to compare.", flag_values=fv)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per model.", flag_values=fv)
  flags.DEFINE_integer("epochs", 3, "Training epochs per run.", flag_values=fv)
  flags.DEFINE_string("data_dir", "demo_data", "The demo data dir.", flag_values=fv)
  flags.DEFINE_string("json", "", "Also write runs and summaries here.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  rows = [run(m, int(s), os.path.abspath(os.path.join(args.workdir, m, f"seed{s}")),
              args.epochs, args.data_dir)
          for m in args.models for s in args.seeds]
  summaries = summarize(rows)
  print(markdown(summaries, reading.read_info(args.data_dir).class_names), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(runs=rows, summary=summaries), f, indent=1)
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

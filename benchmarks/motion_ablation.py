"""tsn vs gsf vs fstfl with the same budget on the offline demo data (motion-only classes).

  python -m data_pipelines.make_demo --out demo_data
  python -m benchmarks.motion_ablation --workdir workdirs/ablation [--models tsn,gsf,fstfl]
      [--epochs 3] [--json ablation.json]

Each model trains with `configs/demo.py:model=<name>` (same data, steps, seed and recipe),
then its final checkpoint is evaluated under every demo protocol. The paper's claim is
fstfl > gsf > tsn on motion-defined classes; the table reports what is measured.
Existing workdirs resume, so an interrupted ablation continues where it stopped.
"""

import argparse
import json
import os
import time

from absl import flags
from absl import logging

from configs import demo
from fstfl_jax import evaluate
from fstfl_jax import train


def run(name: str, workdir: str, epochs: int, data_dir: str) -> dict:
  config = demo.get_config(f"model={name}")
  config.optim.num_epochs = epochs
  config.input.data_dir = data_dir
  t0 = time.perf_counter()
  train.train_and_evaluate(config, workdir, with_eval=False)
  seconds = time.perf_counter() - t0
  results = evaluate.evaluate(config, workdir)
  return dict(model=name, train_seconds=seconds,
              **{f"{p}/{k}": float(r[k]) for p, r in results.items()
                 for k in ("top1", "top5", "mean_class_accuracy")})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--models", default="tsn,gsf,fstfl")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--data_dir", default="demo_data")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags.
  logging.set_verbosity(logging.INFO)  # The train loop's progress lines (rate, ETA).

  rows = [run(m, os.path.abspath(os.path.join(args.workdir, m)), args.epochs, args.data_dir)
          for m in args.models.split(",")]
  keys = [k for k in rows[0] if "/" in k]
  print("| model | train (s) | " + " | ".join(keys) + " |")
  print("|---|---|" + "---|" * len(keys))
  for r in rows:
    print(f"| {r['model']} | {r['train_seconds']:.0f} | "
          + " | ".join(f"{100 * r[k]:.1f}" for k in keys) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

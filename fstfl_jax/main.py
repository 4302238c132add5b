r"""Train and/or evaluate a video model.

  python -m fstfl_jax.main --config configs/sthv1.py:frames=8 --workdir runs/sthv1 \
      [--config.optim.weight_decay=5e-4] [--mode train|eval|train_and_eval]

An existing workdir resumes from its latest checkpoint. Several processes (one per host) start
`jax.distributed` from --coordinator_address/--num_processes/--process_id (defaults from the
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables), or by
auto-detection when SLURM or a multi-host TPU slice is found.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/sthv1.py:frames=8.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and eval results go here.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "train: no validation; eval: evaluate a checkpoint; "
                          "train_and_eval: validate during training, then evaluate the final "
                          "checkpoint under every protocol.")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
  "host:port of process 0 for jax.distributed (multi-process jobs).")
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
  "This process's index.")
_EVAL_PROTOCOL = flags.DEFINE_string(
  "eval_protocol", "all", "Evaluation of the checkpoint: a name in config.evals, or 'all'.")
_EVAL_CHECKPOINT = flags.DEFINE_enum("eval_checkpoint", "latest", ["latest", "best"],
                                     "Which checkpoint --mode eval restores.")
_EVAL_PREDICTIONS = flags.DEFINE_bool("eval_predictions", False,
                                      "Also write per-video predictions (JSONL).")
flags.mark_flags_as_required(["config", "workdir"])


def _auto_detected_multi_process() -> bool:
  """SLURM with several tasks, or a multi-host TPU slice: jax.distributed finds the rest."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
  if _COORDINATOR.value or _NUM_PROCESSES.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _auto_detected_multi_process():
    jax.distributed.initialize()


def _write_config(config, workdir: str) -> None:
  """Saves the config as JSON (process 0); warns when a resumed run's config changed."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=1, sort_keys=True)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if json.load(f) != json.loads(text):
        logging.warning("Config differs from the one in %s; the new one replaces it.", path)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error for an override of a key the config lacks."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    culprit = [a for a in argv if a.startswith("--config.") and key in a.partition("=")[0]]
    sys.exit(f"FATAL: unknown config key {key!r} in {culprit or argv[1:]}: the config is locked, "
             "so --config.<path>=value can only override keys the config file defines.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  initialize_distributed()
  config, workdir = _CONFIG.value, _WORKDIR.value
  logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)

  # Imported after flags are parsed and jax.distributed is up.
  from fstfl_jax import evaluate
  from fstfl_jax import train

  if _MODE.value in ("train", "train_and_eval"):
    train.train_and_evaluate(config, workdir, with_eval=_MODE.value == "train_and_eval")
  if _MODE.value in ("eval", "train_and_eval"):
    # The saved checkpoint, restored as --mode eval would, under every protocol asked for.
    results = evaluate.evaluate(config, workdir, protocol=_EVAL_PROTOCOL.value,
                                checkpoint=_EVAL_CHECKPOINT.value,
                                with_predictions=_EVAL_PREDICTIONS.value)
    if jax.process_index() == 0:
      for name, r in results.items():
        print(f"{name}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
              f"mean class {100 * r['mean_class_accuracy']:.2f}%  ({r['num_videos']} videos)",
              flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

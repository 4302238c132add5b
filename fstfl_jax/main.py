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

from absl import flags
from absl import logging
import jax
import ml_collections

from data_pipelines import records
from fstfl_jax import cli
from fstfl_jax import storage

_CONFIG = cli.define_config_flag()
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
flags.mark_flags_as_required(["workdir"])


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


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the config as JSON (process 0); warns when a resumed run's config changed."""
  path = storage.path(workdir) / "config.json"
  text = config.to_json_best_effort(indent=1, sort_keys=True)
  if path.exists() and storage.read_json(path) != json.loads(text):
    logging.warning("Config differs from the one in %s; the new one replaces it.", path)
  storage.write_text(path, text)


def preflight(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
  """The common mistakes, caught before anything slow starts (each a `cli.UserError`)."""
  wd = storage.check_workdir(workdir)
  records.require_local(config.input.data_dir)
  records.read_info(config.input.data_dir)  # Exists and was built by data_pipelines.build.
  if mode == "eval" and not (wd / "checkpoints").is_dir():
    raise cli.UserError(f"--mode eval: no checkpoints in --workdir {workdir}; train first "
                        "(--mode train) or point --workdir at a training run.")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}: everything is a --flag.")
  initialize_distributed()
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  preflight(config, workdir, mode)
  if mode != "eval" and jax.process_index() == 0:  # --mode eval writes only its results.
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)

  # Imported after flags are parsed and jax.distributed is up.
  from fstfl_jax import evaluate
  from fstfl_jax import train
  from fstfl_jax.models import build_model

  # Validation and the final evaluation share their eval steps: each compiles once per run.
  steps = evaluate.EvalSteps(config, build_model(config.model))
  if mode in ("train", "train_and_eval"):
    train.train_and_evaluate(config, workdir, with_eval=mode == "train_and_eval",
                             eval_steps=steps)
  if mode in ("eval", "train_and_eval"):
    # The saved checkpoint, restored as --mode eval would, under every protocol asked for.
    results = evaluate.evaluate(config, workdir, protocol=_EVAL_PROTOCOL.value,
                                checkpoint=_EVAL_CHECKPOINT.value,
                                with_predictions=_EVAL_PREDICTIONS.value, steps=steps)
    if jax.process_index() == 0:
      for name, r in results.items():
        print(f"{name}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
              f"mean class {100 * r['mean_class_accuracy']:.2f}%  ({r['num_videos']} videos)",
              flush=True)


def run() -> None:
  """Console script `fstfl-train`."""
  cli.run(main)


if __name__ == "__main__":
  run()

r"""fstfl-train: train and/or evaluate a video model.

  fstfl-train --config configs/sthv1.py:frames=8 --workdir runs/sthv1 \
      [--config.optim.weight_decay=5e-4] [--mode train|eval|train_and_eval]
  (the same as `python -m fstfl_jax.main ...`)

An existing workdir resumes from its latest checkpoint. Several processes (one per host) start
`jax.distributed` from --coordinator_address/--num_processes/--process_id (defaults from the
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables), or by
auto-detection when SLURM or a multi-host TPU slice is found. The run itself is
`fstfl_jax.apps.experiment.run`.
"""

import json
import os
from collections.abc import Sequence

import jax
import ml_collections
from absl import flags
from absl import logging

from data_pipelines import cli
from data_pipelines import gcs
from data_pipelines import storage
from data_pipelines.records import reading
from fstfl_jax.apps import experiment

PROG = "fstfl-train"


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-train` besides `--config` (see the module docstring)."""
  flags.DEFINE_string("workdir", None, "Checkpoints, logs and eval results go here.",
                      flag_values=fv, required=True)
  flags.DEFINE_enum("mode", "train_and_eval", list(experiment.MODES),
                    "train: no validation; eval: evaluate a checkpoint; train_and_eval: validate "
                    "during training, then evaluate the final checkpoint under every protocol.",
                    flag_values=fv)
  flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      "host:port of process 0 for jax.distributed (multi-process jobs).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None,
                       "Processes in the job.", flag_values=fv)
  flags.DEFINE_integer("process_id", int(os.environ["JAX_PROCESS_ID"])
                       if "JAX_PROCESS_ID" in os.environ else None, "This process's index.",
                       flag_values=fv)
  flags.DEFINE_string("eval_protocol", "all",
                      "Evaluation of the checkpoint: a name in config.evals, or 'all'.",
                      flag_values=fv)
  flags.DEFINE_enum("eval_checkpoint", "latest", ["latest", "best"],
                    "Which checkpoint --mode eval restores.", flag_values=fv)
  flags.DEFINE_bool("eval_predictions", False, "Also write per-video predictions (JSONL).",
                    flag_values=fv)


def _auto_detected_multi_process() -> bool:
  """SLURM with several tasks, or a multi-host TPU slice: jax.distributed finds the rest."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(args: flags.FlagValues) -> None:
  if args.coordinator_address or args.num_processes:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
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
  gcs.check_reachable(workdir)  # A bucket that does not answer fails here, in seconds.
  wd = storage.check_workdir(workdir)
  reading.read_info(config.input.data_dir)  # Reachable, and built by fstfl-build.
  if mode == "eval" and not (wd / "checkpoints").is_dir():
    raise cli.UserError(f"--mode eval: no checkpoints in --workdir {workdir}; train first "
                        "(--mode train) or point --workdir at a training run.")


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__, config=True)
  initialize_distributed(args)
  config, workdir, mode = args.config, args.workdir, args.mode
  preflight(config, workdir, mode)
  if mode != "eval" and jax.process_index() == 0:  # --mode eval writes only its results.
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
  results = experiment.run(config, workdir, mode, protocol=args.eval_protocol,
                           checkpoint=args.eval_checkpoint,
                           with_predictions=args.eval_predictions)
  if jax.process_index() == 0:
    for name, r in results.items():
      print(f"{name}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
            f"mean class {100 * r['mean_class_accuracy']:.2f}%  ({r['num_videos']} videos)",
            flush=True)
  return 0


def run() -> None:
  """Console script `fstfl-train`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

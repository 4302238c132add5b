"""One run: the config checked against its data, the model built once, training, evaluation.

`run` is what `fstfl-train` does for `--mode train|eval|train_and_eval`. It builds the model and
its eval steps once (`protocols.EvalSteps`), so the in-training validation and the final
evaluation of the saved checkpoint compile each protocol's step once per run.
`train_and_evaluate` and `evaluate_checkpoint` are the two halves, usable on their own (tests,
benchmarks); each checks the config against its data dir first (`consistency`), so a mismatch
stops a run before anything is compiled or written.
"""

from typing import Any

import jax
import ml_collections
from absl import logging

from data_pipelines import pipeline
from data_pipelines.records import reading
from fstfl_jax.apps import consistency
from fstfl_jax.evaluation import evaluate
from fstfl_jax.evaluation import protocols
from fstfl_jax.evaluation import reporting
from fstfl_jax.models import build_model
from fstfl_jax.training import checkpointing
from fstfl_jax.training import guards
from fstfl_jax.training import sharding
from fstfl_jax.training import state as ts
from fstfl_jax.training import train

MODES = ("train", "eval", "train_and_eval")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, with_eval: bool = True,
                       steps: protocols.EvalSteps | None = None) -> ts.TrainState:
  """Trains on `config.input.data_dir` (resuming from `workdir`), validating when `with_eval`.

  `steps`: the run's eval steps (their model is the one trained); default a new model.

  Raises:
    consistency.ConsistencyError: the config does not fit its data dir (nothing is written).
  """
  mesh = sharding.make_mesh()
  config = consistency.for_training(config, with_eval, process_index=jax.process_index(),
                                    process_count=jax.process_count(), num_devices=mesh.size)
  steps = steps or protocols.EvalSteps(config, build_model(config.model))
  validate = evaluate.make_validator(config, steps.model, mesh, steps) if with_eval else None
  return train.train_and_evaluate(config, workdir, model=steps.model, data=pipeline,
                                  validate=validate, mesh=mesh)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        protocol: str = "all", checkpoint: str = "latest",
                        with_predictions: bool = False, mesh: jax.sharding.Mesh | None = None,
                        steps: protocols.EvalSteps | None = None) -> dict[str, dict[str, Any]]:
  """Restores the model state from `workdir` and runs eval protocols, writing their results.

  Args:
    config: the training config; reads model, input, checkpoint and evals.
    workdir: training workdir with `checkpoints/`; results are written next to them.
    protocol: a name in `config.evals`, or 'all'.
    checkpoint: 'latest' or 'best' (by validation top-1).
    with_predictions: also write per-video predictions as JSONL.
    mesh: defaults to all devices; the checkpoint may come from any device count.
    steps: eval steps already built in this run (by the in-training validation).

  Returns:
    {protocol name: `evaluate.evaluate_state` result}.
  """
  mesh = mesh or sharding.make_mesh()
  names = sorted(config.evals) if protocol == "all" else [protocol]
  for name in names:
    protocols.protocol_views(config, name)  # Fail on a bad protocol before the slow restore.
  consistency.check(config, train=False, eval_protocols=names,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    num_devices=mesh.size)
  step = checkpointing.choose_step(config, workdir, checkpoint)
  # Restored as plain dicts, so the optimizer config need not match the one trained with.
  state, step = checkpointing.restore_state_only(workdir, None, mesh, step=step)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  steps = steps or protocols.EvalSteps(config, build_model(config.model))
  class_names = reading.read_info(config.input.data_dir).class_names
  results = {}
  for name in names:
    result = evaluate.run_protocol(config, name, steps(name), variables, mesh,
                                   with_predictions=with_predictions)
    clips, crops = protocols.protocol_views(config, name)
    path = reporting.write_results(workdir, name, step, result, class_names=class_names,
                                   protocol=dict(clips=clips, crops=crops, checkpoint=checkpoint))
    logging.info("eval %s step %d (%dx%d): top1 %.4f top5 %.4f mean-class %.4f on %d videos "
                 "-> %s", name, step, clips, crops, result["top1"], result["top5"],
                 result["mean_class_accuracy"], result["num_videos"], path)
    if result[guards.NONFINITE_KEY]:
      logging.warning("eval %s step %d: %d of %d videos have NaN/Inf scores, counted as wrong.",
                      name, step, result[guards.NONFINITE_KEY], result["num_videos"])
    results[name] = result
  return results


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "train_and_eval", *,
        protocol: str = "all", checkpoint: str = "latest",
        with_predictions: bool = False) -> dict[str, dict[str, Any]]:
  """Trains and/or evaluates (`MODES`); returns the evaluation results ({} for 'train')."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; expected one of {MODES}.")
  # One model and one set of eval steps for the run: validation and the final evaluation share
  # every compiled eval step.
  steps = protocols.EvalSteps(config, build_model(config.model))
  if mode != "eval":
    train_and_evaluate(config, workdir, with_eval=mode == "train_and_eval", steps=steps)
  if mode == "train":
    return {}
  # The saved checkpoint, restored as --mode eval would, under every protocol asked for.
  return evaluate_checkpoint(config, workdir, protocol=protocol, checkpoint=checkpoint,
                             with_predictions=with_predictions, steps=steps)

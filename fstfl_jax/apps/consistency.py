"""Startup check: the config against the data dir it reads, before anything is compiled.

A config and a data dir can disagree without any error until much later, or never: a 5-way head
on 10-class data trains on garbage labels, a published split size on a small data dir keeps the
schedule in warm-up, a model built for 8 frames fed 16-frame clips folds them into the wrong
batch. `check` compares, from the data dir's metadata and one record per split:

  config.model.num_classes      the data dir's class names
  config.model.num_frames       config.input.num_frames (the sampler's T)
  config.input.crop_size        the short side of the stored frames (crops are never upsampled)
  config.input.*_split          the data dir's splits
  config.input.*batch_size      the number of devices (a batch is split evenly over them)

and raises one `ConsistencyError` with a line per mismatch, each naming both values and the
`--config` flag that fixes it. `config.train.num_train_examples` = 0 (the dataset configs'
default; the published sizes stay in `configs/<dataset>.py` as documentation) becomes the train
split's real size; a value set on purpose is kept, with a warning when it differs.

With several processes each reads a contiguous block of the train split. A data dir built
before the train split was written in a shuffled order has blocks of a few classes each; that
is checked from the shard indices (`reading.class_skew` against a shuffled order's) and named
with the command that fixes it: a warning with global BatchNorm (every global batch still holds
every process's block), an error with ghost BatchNorm (`model.bn_group_size`), whose statistics
would come from a few classes.
"""

from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from data_pipelines import cli
from data_pipelines.records import reading
from data_pipelines.records import schema
from fstfl_jax.evaluation import protocols


class ConsistencyError(cli.UserError, ValueError):
  """The config does not fit its data dir; one line per mismatch."""


def _needed_splits(config: ml_collections.ConfigDict, train: bool,
                   eval_protocols: Sequence[str]) -> dict[str, str]:
  """{split: the flag that names it} for the splits this run reads."""
  splits = {}
  if train:
    splits[config.input.train_split] = "input.train_split"
  for name in eval_protocols:
    entry = config.evals[name]
    split = entry.get("split") or config.input.eval_split
    splits.setdefault(split, f"evals.{name}.split" if entry.get("split") else "input.eval_split")
  return splits


def _stored_short_side(data_dir: str, split: str, process_index: int,
                       process_count: int) -> tuple[int, str]:
  """min(height, width) of the first record this process reads, and where it was read."""
  source = reading.open_split(data_dir, split, process_index=process_index,
                              process_count=process_count)
  first = source.block.start if len(source.block) else 0
  record = source[first]
  return min(record["height"], record["width"]), f"split {split!r} record {first}"


def block_skew(config: ml_collections.ConfigDict, meta: reading.DatasetMeta,
               process_count: int) -> str | None:
  """The warning for a train split whose per-process blocks are class-skewed, or None."""
  if process_count < 2 or schema.TRAIN_ORDER in meta.settings:
    return None
  split = config.input.train_split
  paths = reading.split_shards(meta.data_dir, split)
  indices = reading.read_indices(paths)
  labels = np.concatenate([np.asarray(ix["label"], np.int64) for ix in indices])
  blocks = reading.process_blocks([len(ix["label"]) for ix in indices], process_count)
  observed = reading.class_skew(labels, blocks, meta.num_classes)
  shuffled = reading.shuffled_skew(labels, blocks, meta.num_classes)
  if observed <= 2 * shuffled + 0.05:
    return None
  return (f"{meta.data_dir} split {split!r} is in annotation order (built before training "
          f"splits were shuffled): the {process_count} processes' blocks hold classes out of "
          f"proportion (a block's class mix is {observed:.0%} away from the split's, a shuffled "
          f"order's {shuffled:.0%}); rewrite it with `fstfl-reshard --src {meta.data_dir} "
          "--out NEW_DIR` and train on NEW_DIR")


def mismatches(config: ml_collections.ConfigDict, meta: reading.DatasetMeta, *, train: bool,
               eval_protocols: Sequence[str] = (), process_index: int = 0,
               process_count: int = 1, num_devices: int = 1) -> list[str]:
  """One line per disagreement between `config` and the data dir described by `meta`, or
  between its batch sizes and the `num_devices` devices of the run."""
  data_dir, model, inp = meta.data_dir, config.model, config.input
  out = []
  if model.num_classes != meta.num_classes:
    out.append(f"config.model.num_classes={model.num_classes} but {data_dir} has "
               f"{meta.num_classes} classes ({', '.join(meta.class_names[:3])}, ...); fix with "
               f"--config.model.num_classes={meta.num_classes}")
  if model.num_frames != inp.num_frames:
    out.append(f"config.model.num_frames={model.num_frames} but the sampler draws "
               f"config.input.num_frames={inp.num_frames}; fix with "
               f"--config.input.num_frames={model.num_frames} (or the frames=N variant, which "
               "sets both)")
  present = []
  for split, flag in _needed_splits(config, train, eval_protocols).items():
    if split in meta.split_sizes:
      present.append(split)
    else:
      out.append(f"config.{flag}={split!r} but {data_dir} has splits "
                 f"{sorted(meta.split_sizes)}; fix with --config.{flag}=<one of them>")
  for split in present[:1]:
    short, where = _stored_short_side(data_dir, split, process_index, process_count)
    if inp.crop_size > short:
      out.append(f"config.input.crop_size={inp.crop_size} but the frames stored in {data_dir} "
                 f"have a short side of {short} ({where}); fix with "
                 f"--config.input.crop_size={short} (or rebuild the data with --short_side "
                 f">= {inp.crop_size})")
  batches = ([("batch_size", "train")] if train else []) + (
    [("eval_batch_size", "evaluation")] if eval_protocols else [])
  for key, what in batches:
    size = inp[key]
    if size % num_devices:
      fit = max(num_devices, round(size / num_devices) * num_devices)
      out.append(f"config.input.{key}={size} does not split evenly over the {num_devices} "
                 f"devices of the {what}; fix with --config.input.{key}={fit} (a multiple of "
                 f"{num_devices})")
  return out


def for_training(config: ml_collections.ConfigDict, with_eval: bool, *, process_index: int = 0,
                 process_count: int = 1, num_devices: int = 1) -> ml_collections.ConfigDict:
  """`check` for a training run (plus its in-training validation protocol when `with_eval`)."""
  names = (protocols.training_protocol(config),) if with_eval else ()
  return check(config, train=True, eval_protocols=names, process_index=process_index,
               process_count=process_count, num_devices=num_devices)


def check(config: ml_collections.ConfigDict, *, train: bool,
          eval_protocols: Sequence[str] = (), process_index: int = 0,
          process_count: int = 1, num_devices: int = 1) -> ml_collections.ConfigDict:
  """Checks `config` against `config.input.data_dir`; returns it with the train size resolved.

  Args:
    config: the full config.
    train: the run trains (checks the train split and resolves `train.num_train_examples`).
    eval_protocols: names in `config.evals` the run evaluates (their splits are checked).
    process_index, process_count: this process and the job's processes (each reads a block).
    num_devices: the devices of the run's mesh (every batch is split evenly over them).

  Returns:
    A copy of `config` whose `train.num_train_examples` is the train split's size when it was 0.

  Raises:
    ConsistencyError: listing every mismatch (see the module docstring).
  """
  meta = reading.read_info(config.input.data_dir)
  problems = mismatches(config, meta, train=train, eval_protocols=eval_protocols,
                        process_index=process_index, process_count=process_count,
                        num_devices=num_devices)
  skew = block_skew(config, meta, process_count) if train and not problems else None
  if skew and config.model.bn_group_size:
    problems.append(f"{skew}: with config.model.bn_group_size="
                    f"{config.model.bn_group_size} the BatchNorm statistics of a group would "
                    "come from a few classes")
  elif skew:
    logging.warning("%s.", skew)
  if problems:
    raise ConsistencyError("The config does not fit the data dir "
                           f"{config.input.data_dir}:\n  " + "\n  ".join(problems))
  config = config.copy_and_resolve_references()
  if not train:
    return config
  size = meta.split_sizes[config.input.train_split]
  configured = config.train.num_train_examples
  if configured <= 0:
    config.train.num_train_examples = size
    logging.info("An epoch is the %d records of %s split %r.", size, meta.data_dir,
                 config.input.train_split)
  elif configured != size:
    logging.warning("config.train.num_train_examples=%d differs from the %d records of %s split "
                    "%r; the schedule uses %d (set it to 0 to follow the data).", configured, size,
                    meta.data_dir, config.input.train_split, configured)
  return config

"""fstfl-build: ArrayRecord video shards (`data_pipelines.records`) from a source dataset layout.

  fstfl-build --dataset sthv1 --src /data/sthv1 --out /data/sthv1_shards \
      [--split_id 1] [--short_side 256] [--quality 90] [--workers 8] [--num_shards 64] \
      [--shuffle_seed 0]
  (the same as `python -m data_pipelines.build ...`)

Layouts: sthv1, sthv2, k400, ucf101, folder (`ingest.py`). `--src` and `--out` may be local
paths or `gs://` URLs. Videos are decoded with PyAV in spawned worker processes and written in
a deterministic order (the train split in a seeded shuffle of the annotation order, the others
in annotation order), so shard contents are deterministic.

Undecodable, incomplete (truncated: `integrity.py`) or missing videos are skipped and listed in
`<out>/failures.jsonl` ({split, video_id, source, reason} per line). The build is resumable:
finished shards are kept (`writing.ShardWriter` publishes a shard only when complete), and
`<out>/.build_plan.json` makes a rerun with different inputs or settings fail instead of
mixing shards.
"""

import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import av
import numpy as np
import simplejpeg
import tqdm
from absl import flags

from data_pipelines import cli
from data_pipelines import gcs
from data_pipelines import ingest
from data_pipelines import integrity
from data_pipelines import storage
from data_pipelines import video_decode
from data_pipelines.records import schema
from data_pipelines.records import writing

PROG = "fstfl-build"
TOOL_VERSION = "data_pipelines.build 2.0"  # 2.0: record layout 2 (schema.LAYOUT).
PLAN_FILE = ".build_plan.json"
FAILURES_FILE = "failures.jsonl"
FAILURES_DIR = ".failures"  # One list per finished shard, merged into FAILURES_FILE.
RECORDS_PER_SHARD = 256  # Default shard size when --num_shards is not given.


@dataclasses.dataclass(frozen=True)
class BuildResult:
  out: str
  class_names: list[str]
  split_sizes: dict[str, int]
  failures: list[dict[str, str]]
  shards_written: int  # Shards written by this run (resumed ones excluded).

  @property
  def incomplete(self) -> int:
    """Failures that decoded, but clearly short of the frames their container promises."""
    return count_incomplete(self.failures)


def count_incomplete(failures: list[dict[str, str]]) -> int:
  return sum(f["reason"].startswith(integrity.IncompleteVideoError.__name__) for f in failures)


class PlanError(cli.UserError, ValueError):
  """An output dir that holds a build of other inputs or settings."""


_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.


def _watch_parent(parent_pid: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(1.0)
  os._exit(1)


def exit_with_parent(parent_pid: int) -> None:
  """Worker initializer: the worker dies with the build, even when the build is SIGKILLed.

  A pool worker waits on a queue whose write end it holds itself, so it never sees its parent
  go and would decode on as an orphan. On Linux the kernel kills it (PR_SET_PDEATHSIG); elsewhere
  a thread polls the parent pid. Checked once more after arming: the parent may already be gone.
  """
  if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
  else:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
  if os.getppid() != parent_pid:
    os._exit(1)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
  """Spawned worker processes (None for workers <= 0: run inline); one pool per build."""
  if workers <= 0:
    yield None
    return
  # Spawn, not fork: the parent may hold threads (JAX, TFDS) that fork would copy mid-state.
  pool = concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
    initargs=(os.getpid(),))
  try:
    yield pool
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(fn: Callable, tasks: Iterable, pool: concurrent.futures.Executor | None,
                in_flight: int = 32) -> Iterator:
  """`map(fn, tasks)` on `pool`, in order, with at most `in_flight` tasks submitted.

  A few tasks per worker keep them busy; the bound caps memory when one video is slow.
  """
  if pool is None:
    yield from map(fn, tasks)
    return
  tasks = iter(tasks)
  window = collections.deque(pool.submit(fn, t) for t in itertools.islice(tasks, in_flight))
  while window:
    result = window.popleft().result()
    for task in itertools.islice(tasks, 1):
      window.append(pool.submit(fn, task))
    yield result


def check_plan(out: str, plan: dict[str, Any], plan_file: str = PLAN_FILE,
               what: str = "build") -> None:
  """Records the plan of a new `what` in `out`; a rerun must have the same plan to resume."""
  path = storage.path(out) / plan_file
  if path.exists():
    old = storage.read_json(path)
    if old != plan:
      diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
      raise PlanError(f"{out} holds a {what} with different {diff} ({path}); use an empty --out "
                      f"or the same inputs and settings to resume.")
    return
  storage.write_json(path, plan, indent=2, sort_keys=True)


def _ids_digest(entries: list[ingest.Entry]) -> str:
  h = hashlib.sha1()
  for e in entries:
    h.update(f"{e.video_id}\t{e.label}\t{e.source}\n".encode())
  return h.hexdigest()


def write_shard(out: str, split: str, shard: int, num_shards: int,
                entries: list[ingest.Entry],
                results: Iterator[tuple[dict[str, Any] | None, str | None]],
                bar: tqdm.tqdm | None = None) -> list[dict[str, str]]:
  """Writes one shard from the decode results of its entries (in order); returns its failures.

  The shard's failure list goes to `.failures/` before the shard is published, so a finished
  shard always has it. Shared by the local build and the Beam build (`beam_build.py`).
  """
  name = schema.shard_name(split, shard, num_shards)
  failures = []
  with writing.ShardWriter(out, split, shard, num_shards) as writer:
    for entry in entries:
      record, reason = next(results)
      if record is None:
        failures.append(dict(split=split, video_id=entry.video_id, source=entry.source,
                             reason=reason))
      else:
        writer.write(record)
      if bar is not None:
        bar.update()
    storage.write_text(os.path.join(out, FAILURES_DIR, name + ".jsonl"),
                       "".join(json.dumps(f) + "\n" for f in failures))
  return failures


def pending_shards(out: str, split: str, num_entries: int, num_shards: int
                   ) -> list[tuple[int, range]]:
  """(shard, entry range) of the shards of `split` not yet finished in `out`."""
  done = writing.finished_shards(out, split, num_shards)
  return [(s, r) for s, r in enumerate(writing.shard_ranges(num_entries, num_shards))
          if s not in done]


def _build_split(out: str, split: str, entries: list[ingest.Entry], num_shards: int,
                 make_task: Callable[[ingest.Entry], video_decode.Task],
                 pool: concurrent.futures.Executor | None) -> int:
  """Writes the missing shards of one split; returns how many shards were written."""
  pending = pending_shards(out, split, len(entries), num_shards)
  tasks = (make_task(entries[i]) for _, block in pending for i in block)
  results = ordered_map(video_decode.make_record, tasks, pool)
  done = len(entries) - sum(len(block) for _, block in pending)
  with contextlib.closing(results), tqdm.tqdm(total=len(entries), initial=done, unit="video",
                                              desc=split, dynamic_ncols=True) as bar:
    for shard, block in pending:
      failures = write_shard(out, split, shard, num_shards, [entries[i] for i in block], results,
                             bar)
      if failures:
        bar.write(f"{schema.shard_name(split, shard, num_shards)}: skipped {len(failures)} "
                  f"video(s), e.g. {failures[0]['video_id']}: {failures[0]['reason']}")
  return len(pending)


def _collect_failures(out: str, shards: dict[str, int]) -> list[dict[str, str]]:
  paths = [os.path.join(out, FAILURES_DIR, schema.shard_name(split, shard, num_shards) + ".jsonl")
           for split, num_shards in shards.items() for shard in range(num_shards)]
  failures = [json.loads(line) for text in storage.read_files(paths)
              for line in text.decode().splitlines() if line.strip()]
  storage.write_text(os.path.join(out, FAILURES_FILE),
                     "".join(json.dumps(f) + "\n" for f in failures))
  return failures


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a build writes: parsed layout, shards per split, settings, decode parameters."""
  out: str
  name: str
  layout: ingest.Layout
  shards: dict[str, int]
  settings: dict[str, Any]
  short_side: int
  quality: int

  def task(self, entry: ingest.Entry) -> video_decode.Task:
    return video_decode.Task(source=entry.source, label=entry.label, video_id=entry.video_id,
                             short_side=self.short_side, quality=self.quality,
                             fps=self.layout.fps)


def prepare(dataset: str, src: str, out: str, split_id: int = 1, short_side: int = 256,
            quality: int = 90, num_shards: int | None = None, name: str | None = None,
            shuffle_seed: int = 0) -> Plan:
  """Parses the layout, fixes shards and settings, and records or checks `.build_plan.json`.

  The train split is written in a seeded shuffled order: annotation files and class trees list
  videos class by class, and each process of a pod reads a contiguous block of the split
  (`records.reading.process_blocks`), which must hold every class in proportion.
  """
  if short_side < 1 or not 1 <= quality <= 100:
    raise ValueError(f"short_side must be >= 1 and quality in 1..100, got {short_side}, "
                     f"{quality}.")
  for path in (src, out):
    gcs.check_reachable(path)
  layout = ingest.parse(dataset, src, split_id)
  train = layout.splits.get("train")
  if train:
    order = np.random.default_rng(shuffle_seed).permutation(len(train))
    layout = dataclasses.replace(layout, splits=dict(layout.splits,
                                                     train=[train[i] for i in order]))
  shards = {split: min(len(entries), num_shards or math.ceil(len(entries) / RECORDS_PER_SHARD))
            for split, entries in layout.splits.items()}
  settings = dict(dataset=dataset, source_layout=layout.description, split_id=split_id,
                  short_side=short_side, jpeg_quality=quality, tool_version=TOOL_VERSION,
                  pyav=av.__version__, libavcodec=str(av.library_versions.get("libavcodec")),
                  simplejpeg=simplejpeg.__version__, num_shards=shards,
                  **{schema.TRAIN_ORDER: dict(shuffle_seed=shuffle_seed)})
  storage.path(out).mkdir(parents=True, exist_ok=True)
  check_plan(out, dict(settings, class_names=layout.class_names,
                        videos={s: len(e) for s, e in layout.splits.items()},
                        digest={s: _ids_digest(e) for s, e in layout.splits.items()}))
  return Plan(out, name or dataset, layout, shards, settings, short_side, quality)


def finish(plan: Plan, written: int) -> BuildResult:
  """Merges the failure lists and writes the metadata once every shard is finished."""
  failures = _collect_failures(plan.out, plan.shards)
  sizes = writing.write_metadata(plan.out, plan.layout.class_names, list(plan.layout.splits),
                                 dict(plan.settings, skipped=len(failures),
                                      incomplete=count_incomplete(failures)),
                                 dataset_name=plan.name)
  empty = [split for split, size in sizes.items() if size == 0]
  if empty:
    raise RuntimeError(f"no video of split(s) {empty} could be decoded; reasons in "
                       f"{os.path.join(plan.out, FAILURES_FILE)}.")
  return BuildResult(plan.out, plan.layout.class_names, sizes, failures, written)


def build(dataset: str, src: str, out: str, split_id: int = 1, short_side: int = 256,
          quality: int = 90, workers: int | None = None, num_shards: int | None = None,
          name: str | None = None, shuffle_seed: int = 0) -> BuildResult:
  """Parses the layout, writes missing shards, failures and metadata; see module docstring.

  Args:
    dataset: one of `ingest.PARSERS`.
    src: source root of that layout.
    out: output data dir (created; may hold a previous, interrupted build of the same plan).
    split_id: UCF-101 split 1-3 (ignored by other layouts).
    short_side: cap on the stored frames' short side (never upscaled).
    quality: JPEG quality of re-encoded frames.
    workers: decode processes (0: decode in this process); default: CPU count.
    num_shards: shards per split (at most one per video); default: ceil(videos / 256).
    name: dataset name in the TFDS metadata; default: `dataset`.
    shuffle_seed: seed of the train split's order (`prepare`).
  """
  plan = prepare(dataset, src, out, split_id, short_side, quality, num_shards, name,
                 shuffle_seed)
  workers = (os.cpu_count() or 1) if workers is None else workers
  with process_pool(workers) as pool:
    written = sum(_build_split(out, split, entries, plan.shards[split], plan.task, pool)
                  for split, entries in plan.layout.splits.items())
  return finish(plan, written)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-build` (see the module docstring)."""
  flags.DEFINE_enum("dataset", None, sorted(ingest.PARSERS), "Source layout.", flag_values=fv,
                    required=True)
  flags.DEFINE_string("src", None, "Source root of the layout (local path or gs://).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("out", None, "Output data dir (local path or gs://).", flag_values=fv,
                      required=True)
  flags.DEFINE_integer("split_id", 1, "UCF-101 split (1-3).", flag_values=fv)
  flags.DEFINE_integer("short_side", 256, "Cap on the frames' short side.", flag_values=fv)
  flags.DEFINE_integer("quality", 90, "JPEG quality.", flag_values=fv)
  flags.DEFINE_integer("workers", None, "Decode processes (0: inline).", flag_values=fv)
  flags.DEFINE_integer("num_shards", None, "Shards per split.", flag_values=fv)
  flags.DEFINE_string("name", None, "Dataset name in the TFDS metadata.", flag_values=fv)
  flags.DEFINE_integer("shuffle_seed", 0, "Seed of the train split's order.", flag_values=fv)


def summary(result: BuildResult) -> str:
  """The one-line report of a finished build."""
  return (f"{result.out}: {len(result.class_names)} classes, "
          + ", ".join(f"{s}={n}" for s, n in result.split_sizes.items())
          + f"; skipped {len(result.failures)} video(s) ({result.incomplete} incomplete)"
          + (f", listed in {os.path.join(result.out, FAILURES_FILE)}" if result.failures
             else "") + f"; wrote {result.shards_written} shard(s).")


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  result = build(args.dataset, args.src, args.out, args.split_id, args.short_side, args.quality,
                 args.workers, args.num_shards, args.name, args.shuffle_seed)
  print(summary(result))
  return 0


def run() -> None:
  """Console script `fstfl-build`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

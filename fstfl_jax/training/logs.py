"""What a run logs: metrics.jsonl and TensorBoard events (local or `gs://`) and a progress line.

Only process 0 writes files; every process may call the writers. The progress line gives the rate
and ETA of any loop of known length (train steps, eval batches, predicted videos).
"""

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from data_pipelines import storage

METRICS_FILE = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


class MetricWriter:
  """A `.jsonl` log, one JSON object per `write`, on process 0 only; local or `gs://`.

  Every process may call it (so callers need no `if process_index == 0`); the others do nothing.
  Each write rewrites the whole file (Cloud Storage objects cannot be appended to; locally the
  file is replaced atomically), so a pre-empted run keeps everything logged so far and a crash
  never leaves a torn line.

  Args:
    path: the log file; existing lines are kept.
    process_index: defaults to `jax.process_index()`.
    keep_until_step: on resume, drop existing lines of later steps (they are about to be redone).
  """

  def __init__(self, path: str | os.PathLike, *, process_index: int | None = None,
               keep_until_step: int | None = None):
    self.path = storage.path(path)
    index = jax.process_index() if process_index is None else process_index
    self.active = index == 0
    self._lines: list[str] = []
    if self.active and self.path.exists():
      for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
          continue
        try:
          step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
          raise storage.StorageError(f"{self.path} line {n}: not a metrics record "
                                     "({\"step\": ...}); move the file away to start a new log."
                                     ) from None
        if keep_until_step is None or step <= keep_until_step:
          self._lines.append(line + "\n")
      if keep_until_step is not None:
        storage.write_text(self.path, "".join(self._lines))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes `{"step": step, **metrics}`; arrays and numpy scalars become JSON values."""
    if not self.active:
      return
    record = {"step": int(step), **_jsonable(dict(metrics))}
    self._lines.append(json.dumps(record) + "\n")
    storage.write_text(self.path, "".join(self._lines))

  def close(self) -> None:
    self.active = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class TensorBoardWriter:
  """Scalar TensorBoard events in `logdir`, local or `gs://`.

  tensorboardX appends to its event files, which Cloud Storage cannot do (its own GCS writer
  fails), so for a `gs://` logdir the events go to a local temporary directory and every
  `write` uploads the files that changed, as whole objects.
  """

  def __init__(self, logdir: str | os.PathLike):
    import tensorboardX  # pylint: disable=g-import-not-at-top  (only process 0 writes events)
    self._remote = storage.path(logdir) if storage.is_remote(logdir) else None
    self._local = (tempfile.mkdtemp(prefix="fstfl_tensorboard_") if self._remote
                   else os.fspath(storage.path(logdir)))
    self._writer = tensorboardX.SummaryWriter(self._local)
    self._uploaded: dict[str, int] = {}

  def write(self, step: int, values: Mapping[str, float]) -> None:
    for k, v in values.items():
      self._writer.add_scalar(k, v, step)
    self._writer.flush()
    if self._remote is not None:
      storage.mirror_dir(self._local, self._remote, self._uploaded)

  def close(self) -> None:
    self._writer.close()
    if self._remote is not None:
      storage.mirror_dir(self._local, self._remote, self._uploaded)
      shutil.rmtree(self._local, ignore_errors=True)


def format_duration(seconds: float) -> str:
  """'1d02h03m', '2h05m', '3m07s' or '12s'."""
  seconds = max(0, int(round(seconds)))
  days, rest = divmod(seconds, 86_400)
  hours, rest = divmod(rest, 3_600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d{hours:02d}h{minutes:02d}m"
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Progress:
  """Rate and ETA for a loop of known length, measured from the first `update`.

  The first update only starts the clock, so compilation time before it does not skew the rate.

  Usage: `p = Progress(total); ...; logging.info("step %d %s", i, p.update(i))`.
  """

  def __init__(self, total: int, *, unit: str = "steps",
               clock: Callable[[], float] = time.monotonic):
    self.total = total
    self.unit = unit
    self._clock = clock
    self._start: tuple[int, float] | None = None
    self.rate = float("nan")

  def update(self, done: int) -> str:
    """Records `done` of `total` units finished; returns e.g. '40/100 2.50 steps/s ETA 24s'."""
    now = self._clock()
    if self._start is None:
      self._start = (done, now)
    first, start = self._start
    if done > first and now > start:
      self.rate = (done - first) / (now - start)
    if not self.rate > 0:  # The clock has only just started.
      return f"{done}/{self.total} ? {self.unit}/s ETA ?"
    eta = format_duration((self.total - done) / self.rate)
    return f"{done}/{self.total} {self.rate:.2f} {self.unit}/s ETA {eta}"


class TrainLogs:
  """metrics.jsonl + TensorBoard events (process 0 only, local or `gs://`) + the progress line."""

  def __init__(self, workdir: str, total: int, resumed_step: int):
    workdir = storage.path(workdir)
    self.jsonl = MetricWriter(workdir / METRICS_FILE, keep_until_step=resumed_step)
    self.tb = (TensorBoardWriter(workdir / "tensorboard")
               if jax.process_index() == 0 else None)
    self.progress = Progress(total)  # Its clock starts at the first log step.

  def write(self, step: int, values: dict[str, float], prefix: str) -> None:
    values = {f"{prefix}/{k}": v for k, v in values.items()}
    self.jsonl.write(step, values)
    if self.tb is not None:
      self.tb.write(step, values)

  def close(self) -> None:
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()

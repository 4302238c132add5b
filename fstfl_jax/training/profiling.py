"""Where a training run's time goes: a profiler trace of chosen steps, and input-wait fractions.

`config.train.profile_steps = "a:b"` traces steps a, a + 1, ..., b - 1 (Python's half-open
range, steps counted from 0 as the loop runs them) with `jax.profiler` into
`<workdir>/profile/plugins/profile/<run>/<host>.xplane.pb`, the files TensorBoard's profile
plugin reads (`tensorboard --logdir <workdir>/profile`). A `gs://` workdir gets the files
uploaded after the trace; a local one gets them directly.

`WaitClock` splits each log interval's wall time: the time the host blocked on the input
(the next batch from the pipeline and its copy to the devices) and the time it blocked on the
device (the metrics fetch at log steps, which the finite-state guard needs anyway). The train
log and metrics.jsonl report both as fractions (`train/input_wait_fraction`,
`train/device_wait_fraction`): a high input wait means the host does not keep the chips fed.
"""

import os
import shutil
import tempfile
import time
from typing import Any

import jax
from absl import logging

from data_pipelines import cli
from data_pipelines import storage

PROFILE_DIR = "profile"


def parse_steps(spec: str) -> range:
  """"a:b" -> range(a, b); "" -> an empty range (no trace)."""
  if not spec:
    return range(0)
  first, sep, last = spec.partition(":")
  try:
    steps = range(int(first), int(last)) if sep else range(0)
  except ValueError:
    steps = range(0)
  if not steps or steps.start < 0:
    raise cli.UserError(f"config.train.profile_steps={spec!r}: expected 'a:b' with 0 <= a < b "
                        "(the steps a, ..., b - 1 are traced), e.g. --config.train.profile_steps="
                        "10:15")
  return steps


class ProfileWindow:
  """Starts `jax.profiler` before the first step of `steps` and stops it after the last one."""

  def __init__(self, spec: str, workdir: str):
    self.steps = parse_steps(spec)
    self._target = storage.path(workdir) / PROFILE_DIR
    self._local = None

  def before(self, step: int) -> None:
    """Call before running step `step` (0-based: the number of steps done so far)."""
    if step != self.steps.start or not self.steps:
      return
    remote = storage.is_remote(self._target)
    self._local = (tempfile.mkdtemp(prefix="fstfl_profile_") if remote
                   else os.fspath(self._target))
    logging.info("Profiling steps %d-%d into %s.", self.steps.start, self.steps.stop - 1,
                 self._target)
    jax.profiler.start_trace(self._local)

  def after(self, step: int, state: Any) -> None:
    """Call after step `step` ran; `state` is waited for, so the trace holds its device work."""
    if self._local is None or step != self.steps.stop - 1:
      return
    jax.block_until_ready(state)
    self.close()
    logging.info("Profile written to %s.", self._target)

  def close(self) -> None:
    """Stops an open trace (also one a stopped run left open) and puts its files in place."""
    if self._local is None:
      return
    jax.profiler.stop_trace()
    if storage.is_remote(self._target):
      for path in storage.walk_files(self._local):
        storage.copy_file(path, self._target / os.path.relpath(path, self._local))
      shutil.rmtree(self._local, ignore_errors=True)
    self._local = None


class WaitClock:
  """Sums the host's time blocked on input and on the device since the last `restart()`."""

  def __init__(self):
    self.restart()

  def restart(self) -> None:
    self._start = time.monotonic()
    self._input = self._device = 0.0

  def add_input(self, seconds: float) -> None:
    self._input += seconds

  def add_device(self, seconds: float) -> None:
    self._device += seconds

  def elapsed(self) -> float:
    return max(time.monotonic() - self._start, 1e-9)

  def fractions(self) -> dict[str, float]:
    """{input_wait_fraction, device_wait_fraction} of the wall time since `restart()`."""
    wall = self.elapsed()
    return {"input_wait_fraction": min(1.0, self._input / wall),
            "device_wait_fraction": min(1.0, self._device / wall)}

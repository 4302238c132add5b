"""The demo recipe learns motion: a short run of configs/demo.py must bring the training loss
well below chance (ln 12 = 2.48), with the default threads and on one core.

The run is `python -m fstfl_jax.main --config configs/demo.py --mode train`, the demo's own
config and command, on a small demo dataset (`make_demo` with 20 clips per class, so an epoch is
15 steps), shortened from the demo's 12 epochs to 8 so that the whole schedule, warm-up and
cosine, is 120 steps. One run uses
every core the test may use (what `scripts/demo.sh` does), the other is pinned to one core (as
`taskset -c 0`), where XLA:CPU splits its reductions differently; both must learn, not only one
of them by luck of the rounding. Both run at the same time, so on two cores the test takes about
as long as one run.

`LOSS_BOUND` comes from the measured distribution of the loss this test checks (docs/results.md,
"Test bound"): the mean training loss over steps 111-120 was 0.90-1.76 over seeds 0-4 with the
default threads and 1.08 / 1.43 for seeds 0 / 1 on one core (worst 1.76), and 2.21 for
`model=tsn`, the same net without temporal modelling, which cannot learn motion-only classes and
lowers its loss only by memorising the 240 clips. The bound sits between the two.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import demo
from data_pipelines import make_demo

ROOT = pathlib.Path(__file__).resolve().parent.parent
VIDEOS_PER_CLASS = 20
EPOCHS = 8
STEPS = 120  # The whole schedule on 240 clips: 8 epochs of 15 steps.
LOG_EVERY = 10
LOSS_BOUND = 2.0  # Worst learning run 1.76, tsn (no temporal modelling) 2.21.


def train_command(data_dir: str, workdir: str, *, steps: int = STEPS, seed: int = 0,
                  model: str = "fstfl") -> list[str]:
  """The demo's training command (`configs/demo.py`) with an `EPOCHS`-epoch schedule, stopped
  after `steps` steps."""
  return [sys.executable, "-m", "fstfl_jax.main", "--config", f"configs/demo.py:model={model}",
          "--workdir", workdir, "--mode", "train", f"--config.input.data_dir={data_dir}",
          f"--config.optim.num_epochs={EPOCHS}", f"--config.train.num_train_steps={steps}",
          f"--config.train.log_every_steps={LOG_EVERY}",
          f"--config.train.seed={seed}", f"--config.input.shuffle_seed={seed}",
          "--config.checkpoint.async_save=False"]


def start(command: list[str], one_core: bool) -> subprocess.Popen:
  """Starts `command` as the demo runs it: one CPU device, default XLA flags (not the 8 emulated
  devices of the test process); `one_core` pins it to the lowest allowed core (taskset -c)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  core = min(os.sched_getaffinity(0))
  pin = (lambda: os.sched_setaffinity(0, {core})) if one_core else None
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=pin)


def train_losses(workdir: str) -> dict[int, float]:
  """{step: mean training loss of the `LOG_EVERY` steps up to it} from metrics.jsonl."""
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("demo_recipe_data"))
  make_demo.make_demo(out, videos_per_class=VIDEOS_PER_CLASS, val_videos_per_class=1, workers=0)
  return out


def test_demo_recipe_learns_on_default_threads_and_on_one_core(demo_data, tmp_path):
  runs = {name: (str(tmp_path / name), start(train_command(demo_data, str(tmp_path / name)),
                                             one_core=name == "one_core"))
          for name in ("default", "one_core")}
  try:
    for name, (_, proc) in runs.items():
      output, _ = proc.communicate(timeout=900)
      assert proc.returncode == 0, f"{name} run failed:\n{output[-3000:]}"
  finally:  # A failed or timed-out run must not leave the other one training.
    for _, proc in runs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for name, (workdir, _) in runs.items():
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), name
    # The first steps are at chance (no class information in a single frame, none learnt yet).
    assert losses[LOG_EVERY] > LOSS_BOUND, (name, losses)
    assert losses[STEPS] < LOSS_BOUND, (
      f"{name}: the demo recipe no longer learns: training loss {losses[STEPS]:.3f} over steps "
      f"{STEPS - LOG_EVERY + 1}-{STEPS} (bound {LOSS_BOUND}, chance 2.48); losses {losses}")


def test_stated_range_covers_the_measured_distribution():
  """The range scripts/demo.sh prints contains every measured seed and is not vacuous."""
  m, (low, high) = demo.MEASURED_TOP1, demo.EXPECTED_TOP1
  assert m["runs"] >= 5
  assert 100 / demo.NUM_CLASSES < low <= m["min"] <= m["mean"] <= m["max"] <= high <= 100
  assert f"between {low:.0f}% and {high:.0f}%" in demo.expected_result()

r"""Classify video files with a trained checkpoint: top-k class names and probabilities.

  fstfl-predict --workdir workdirs/demo \
      --video demo_data/raw/validation/01_move_right [--video more files or folders] \
      [--topk 5] [--json] [--checkpoint latest|best] [--batch_size N] [--clips K --crops C]

The config comes from `<workdir>/config.json` (written by `fstfl_jax.main`), or from
`--config configs/<dataset>.py[:variants]` (`fstfl_jax.apps.inference`). Every file is decoded
and transformed exactly as the eval pipeline does it (`fstfl_jax.apps.video_io`), with the views
of the
protocol the training validated with (`config.train_eval`) unless --clips/--crops are given,
and scored by the eval step itself (`training.steps.make_eval_step`): the softmax of the
view-averaged logits. A folder stands for the video files below it. Class names come from the
dataset metadata in `config.input.data_dir` (class indices if it is absent).

Output on stdout, one line per video: `PATH: name1 0.912, name2 0.041, ...`, or with --json one
object per line: {"video", "step", "topk": [{"index", "class", "prob"}, ...]}. A file that
cannot be decoded gets one line on stderr and the others still run. Exit status: 0 if at least
one video was classified, 1 if none was (every file failed), 2 on bad arguments. Flags use absl
syntax, as every command of the project (`--help` lists them). Same as
`python -m fstfl_jax.apps.predict`.
"""

import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import flags
import numpy as np

from data_pipelines import cli
from fstfl_jax.apps import inference
from fstfl_jax.apps import video_io
from fstfl_jax.evaluation import protocols
from fstfl_jax.models import build_model
from fstfl_jax.training import guards
from fstfl_jax.training import logs
from fstfl_jax.training import sharding
from fstfl_jax.training import steps

PROG = "fstfl-predict"
ERROR_STATUS_ALL_FAILED = 1
PROGRESS_EVERY_S = 10.0  # Seconds between progress lines on stderr.


def default_views(config: ml_collections.ConfigDict) -> tuple[int, int, int | None]:
  """(clips, crops, views_per_step) of the protocol validated during training."""
  name = protocols.training_protocol(config)
  clips, crops = protocols.protocol_views(config, name)
  return clips, crops, config.evals[name].get("views_per_step")


class Predictor:
  """Batched view-averaged logits of video files, computed by the eval step.

  Args:
    config: the training config.
    variables: restored {'params', 'batch_stats'} (replicated on `mesh`).
    mesh: the `('data',)` mesh; batches are padded to a multiple of its size.
    clips, crops: test views per video.
    batch_size: videos per model call (rounded up to a multiple of the mesh size).
    views_per_step: views per model call inside a video batch (None: all).
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: Mapping[str, Any],
               mesh: jax.sharding.Mesh, *, clips: int, crops: int, batch_size: int,
               views_per_step: int | None = None):
    self.config, self.variables, self.mesh = config, variables, mesh
    self.clips, self.crops = clips, crops
    self.batch_size = -(-max(1, batch_size) // mesh.size) * mesh.size
    self.settings = video_io.decode_settings(config.input.data_dir)
    self.step_fn = steps.make_eval_step(build_model(config.model), config.model.num_classes,
                                        views_per_step)

  def load(self, path: str) -> np.ndarray:
    """uint8 [V, T, S, S, 3]; raises `video_io.VideoError`."""
    return video_io.load_views(path, self.config.input, clips=self.clips, crops=self.crops,
                               settings=self.settings)

  def logits(self, videos: Sequence[np.ndarray]) -> np.ndarray:
    """[N, V, T, S, S, 3] uint8 videos (N <= batch_size) -> float32 [N, K]."""
    n = len(videos)
    # Always a full batch: one compiled shape, padding rows masked out of the (unused) metrics.
    video = np.zeros((self.batch_size,) + videos[0].shape, np.uint8)
    video[:n] = np.stack(videos)
    batch = dict(video=video, label=np.zeros(self.batch_size, np.int32),
                 mask=np.arange(self.batch_size) < n)
    with jax.set_mesh(self.mesh):
      out = self.step_fn(self.variables, sharding.to_global(batch, self.mesh))
    return np.asarray(jax.device_get(out["logits"]))[:n]

  def run(self, paths: Sequence[str]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(path, logits [K] or None, error message or None) per path, in order.

    Files of a batch are decoded in threads (PyAV, simplejpeg and cv2 release the GIL).
    """
    progress = logs.Progress(len(paths), unit="videos")
    shown, reported = time.monotonic(), False
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
      for start in range(0, len(paths), self.batch_size):
        chunk = paths[start:start + self.batch_size]
        loaded = list(pool.map(self._try_load, chunk))
        good = [(path, views) for path, (views, _) in zip(chunk, loaded) if views is not None]
        logits = iter(self.logits([v for _, v in good]) if good else [])
        for path, (views, error) in zip(chunk, loaded):
          yield path, (next(logits) if views is not None else None), error
        done = start + len(chunk)
        status = progress.update(done)
        # Only long runs report, every PROGRESS_EVERY_S seconds and once at the end.
        if time.monotonic() - shown > PROGRESS_EVERY_S or (done == len(paths) and reported):
          print(f"{PROG}: {status}", file=sys.stderr)
          shown, reported = time.monotonic(), True

  def _try_load(self, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
      return self.load(path), None
    except video_io.VideoError as e:
      return None, " ".join(str(e).split())  # One line, whatever FFmpeg said.


def top_k(logits: np.ndarray, names: Sequence[str], k: int) -> list[dict[str, Any]]:
  """The k most probable classes of one video [K], ties in class order."""
  probs = inference.softmax(logits.astype(np.float64))
  order = np.argsort(-logits, kind="stable")[:k]
  return [dict(index=int(i), **{"class": names[i]}, prob=float(probs[i])) for i in order]


def format_line(path: str, top: Sequence[Mapping[str, Any]]) -> str:
  return f"{path}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in top)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-predict` (see the module docstring)."""
  flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/).", flag_values=fv,
                      required=True)
  flags.DEFINE_multi_string("video", None, "A video file, frame folder or folder of videos; "
                            "repeat the flag for more.", flag_values=fv, required=True)
  flags.DEFINE_string("config", None, "configs/<dataset>.py[:variants]; default "
                      "<workdir>/config.json.", flag_values=fv)
  flags.DEFINE_integer("topk", 5, "Classes printed per video.", lower_bound=1, flag_values=fv)
  flags.DEFINE_bool("json", False, "One JSON object per line.", flag_values=fv)
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Checkpoint to restore.",
                    flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Videos per model call; default the number of "
                       "devices.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("clips", None, "Clips per video; default config.train_eval's.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum("crops", None, ["1", "3", "10"], "Crops per clip; default "
                    "config.train_eval's.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  config = inference.load_config(args.workdir, args.config)
  clips, crops, views_per_step = default_views(config)
  if args.clips or args.crops:
    clips, crops, views_per_step = args.clips or clips, int(args.crops or crops), None
  mesh = sharding.make_mesh()
  try:
    variables, step = inference.restore_variables(config, args.workdir, args.checkpoint, mesh)
  except guards.NonFiniteError as e:
    cli.print_error(PROG, str(e))
    return ERROR_STATUS_ALL_FAILED
  names = inference.class_names(config, PROG)
  predictor = Predictor(config, variables, mesh, clips=clips, crops=crops,
                        batch_size=args.batch_size or mesh.size, views_per_step=views_per_step)
  paths = video_io.expand_paths(args.video)
  classified = 0
  for path, logits, error in predictor.run(paths):
    if logits is None:
      cli.print_error(PROG, error)
      continue
    classified += 1
    top = top_k(logits, names, min(args.topk, len(names)))
    if args.json:
      print(json.dumps(dict(video=path, step=step, topk=top)))
    else:
      print(format_line(path, top))
    sys.stdout.flush()
  if not paths:
    cli.print_error(PROG, f"no video files in {args.video}")
  return 0 if classified else ERROR_STATUS_ALL_FAILED


def run() -> None:
  """Console script `fstfl-predict`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

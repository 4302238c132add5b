"""Offline demo data: a synthetic fine-grained motion dataset, built through the real pipeline.

  fstfl-make-demo --out /tmp/demo [--videos_per_class 150 --val_videos_per_class 16
      --size 32 --frames 8 --seed 0 --workers 2 --rotate90]
  (the same as `python -m data_pipelines.make_demo ...`)

Every clip shows a static random-texture background (at 0.4x contrast), one random-texture square
(the actor) and two small random-texture distractors drifting in random directions, plus mild
noise. Textures are normalised to the same mean and contrast in every class, start positions,
angles and sizes are uniform random, and motion wraps around the frame edges (a torus), so the
position of the actor in any single frame is uniform for every class: one frame carries no class
information, only motion does.
The 12 classes (`CLASS_NAMES`, label = index, which is also their sorted order):

  move left / right / up / down (3 px/frame), move right fast (6 px/frame),
  pretend to move right / left (out for half the clip, then back), rotate clockwise /
  counter-clockwise (24 deg/frame), approach / recede (size x1.12 / x0.89 per frame), stay still.

The default clip has the 8 frames the demo model takes, at 32x32 (configs/demo.py), so TSN
sampling takes every frame and each class moves at one speed between the frames the model sees.
(Longer clips sampled to 8 take a random frame of each segment: with 16 frames the step between
two sampled frames is 1-3 rendered frames, so one class's motion per step varies threefold.)

Videos are written as h264 `.mp4` to `<out>/raw/<split>/<class>/` and then ingested with the
`folder` layout of `data_pipelines.build` into `<out>/` (so the demo exercises the real decoder
and shard writer). Defaults: 1800 train + 192 validation clips of 8 frames at 32x32. Existing
clips are reused on a rerun only if `<out>/raw/render.json` shows the same seed, size, frames and
renderer source; otherwise the command stops rather than mix clips of two renderers.
"""

import functools
import hashlib
import inspect
import json
import math
import os
from collections.abc import Sequence

import av
import numpy as np
from absl import flags

from data_pipelines import build as build_lib
from data_pipelines import cli

PROG = "fstfl-make-demo"
CLASS_NAMES = (
  "00_move_left", "01_move_right", "02_move_up", "03_move_down", "04_move_right_fast",
  "05_pretend_move_right", "06_pretend_move_left", "07_rotate_clockwise",
  "08_rotate_counterclockwise", "09_approach", "10_recede", "11_still",
)
SPLITS = ("train", "validation")
FPS = 12
_SPEED, _FAST, _SPIN, _GROW = 3.0, 6.0, math.radians(24), 1.12
_DISTRACTOR_SPEED = 3.0  # Largest |velocity| per axis of a distractor, px/frame.
_MEAN, _STD = 128.0, 40.0  # Shared texture statistics of actor, distractors and background.
_BACKGROUND_CONTRAST = 0.4


def _texture(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """[size, size, 3] float texture: `cells`x`cells` random colours, upsampled, fixed mean/std."""
  coarse = rng.normal(size=(cells, cells, 3))
  reps = -(-size // cells)
  tex = np.kron(coarse, np.ones((reps, reps, 1)))[:size, :size]
  tex = tex + 0.3 * rng.normal(size=tex.shape)
  return _MEAN + _STD * (tex - tex.mean((0, 1))) / (tex.std((0, 1)) + 1e-6)


def _motion(cls: str, t: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
  """Per-frame (dx, dy, angle, log-scale) offsets of the actor for class `cls`; t = 0..T-1."""
  zero = np.zeros_like(t, dtype=np.float64)
  half = frames // 2
  there_and_back = np.minimum(t, 2 * half - t).clip(0) * _SPEED  # Same speed as move_*.
  dx = {"00_move_left": -_SPEED * t, "01_move_right": _SPEED * t, "04_move_right_fast": _FAST * t,
        "05_pretend_move_right": there_and_back, "06_pretend_move_left": -there_and_back}
  dy = {"02_move_up": -_SPEED * t, "03_move_down": _SPEED * t}
  angle = {"07_rotate_clockwise": _SPIN * t, "08_rotate_counterclockwise": -_SPIN * t}
  # Approach/recede centre their size range on the clip middle so the size marginal matches.
  grow = {"09_approach": (t - (frames - 1) / 2) * math.log(_GROW),
          "10_recede": -(t - (frames - 1) / 2) * math.log(_GROW)}
  return (dx.get(cls, zero), dy.get(cls, zero), angle.get(cls, zero), grow.get(cls, zero))


@functools.cache
def _grid(size: int) -> np.ndarray:
  return np.mgrid[:size, :size].astype(np.float64)


def _paste(frame: np.ndarray, tex: np.ndarray, cx: float, cy: float, angle: float,
           scale: float) -> None:
  """Draws square texture `tex` rotated/scaled at (cx, cy) on `frame` in place, wrapping edges."""
  size = frame.shape[0]
  ys, xs = _grid(size)
  # Displacement from the centre on the torus, then back into texture coordinates.
  dx = (xs - cx + size / 2) % size - size / 2
  dy = (ys - cy + size / 2) % size - size / 2
  cos, sin = math.cos(angle), math.sin(angle)
  u = (cos * dx + sin * dy) / scale + tex.shape[1] / 2
  v = (-sin * dx + cos * dy) / scale + tex.shape[0] / 2
  inside = (u >= 0) & (u < tex.shape[1]) & (v >= 0) & (v < tex.shape[0])
  frame[inside] = tex[v[inside].astype(int), u[inside].astype(int)]


def render_clip(cls: str, rng: np.random.Generator, size: int = 32,
                frames: int = 8) -> np.ndarray:
  """One clip of class `cls` as [T, size, size, 3] uint8 RGB."""
  # A lower-contrast background, the same for every class, so the actor can be found at all;
  # the class is still only in how it moves.
  background = _MEAN + _BACKGROUND_CONTRAST * (_texture(rng, size, cells=8) - _MEAN)
  actor_px = max(4, round(size * 0.3))
  actor = _texture(rng, actor_px, cells=4)
  distractor_px = max(2, round(size * 0.12))
  distractors = [(_texture(rng, distractor_px, cells=2), rng.uniform(0, size, 2),
                  rng.uniform(-_DISTRACTOR_SPEED, _DISTRACTOR_SPEED, 2)) for _ in range(2)]
  cx, cy = rng.uniform(0, size, 2)
  angle0 = rng.uniform(0, 2 * math.pi)
  log_scale0 = rng.uniform(-0.25, 0.25)
  t = np.arange(frames)
  dx, dy, angle, log_scale = _motion(cls, t, frames)
  clip = np.empty((frames, size, size, 3), np.uint8)
  for i in range(frames):
    frame = background.copy()
    for tex, pos, vel in distractors:
      px, py = pos + vel * i
      _paste(frame, tex, px, py, 0.0, 1.0)
    _paste(frame, actor, cx + dx[i], cy + dy[i], angle0 + angle[i],
           math.exp(log_scale0 + log_scale[i]))
    frame += rng.normal(0, 4, frame.shape)
    clip[i] = frame.clip(0, 255).round().astype(np.uint8)
  return clip


def write_mp4(path: str, clip: np.ndarray, fps: int = FPS) -> None:
  """[T, H, W, 3] uint8 -> h264 `.mp4` (yuv420p; H and W must be even)."""
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = clip.shape[1:3]
    stream.pix_fmt = "yuv420p"
    # A constant quantiser, not CRF: x264's CRF rate control made different bitstreams (and
    # decoded pixels) of the same clip from run to run when the machine was busy, so the demo
    # dataset, and every number trained on it, did not repeat. qp is decided per frame type only.
    stream.options = {"qp": "18", "preset": "veryfast"}
    for frame in clip:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def _write_one(job: tuple[str, str, int, int, int, int, int, bool]) -> None:
  path, cls, split_index, video, seed, size, frames, rotate90 = job
  rng = np.random.default_rng([seed, split_index, CLASS_NAMES.index(cls), video])
  clip = render_clip(cls, rng, size, frames)
  # Counter-clockwise: right -> up, up -> left, left -> down, down -> right.
  write_mp4(path, np.ascontiguousarray(np.rot90(clip, 1, axes=(1, 2))) if rotate90 else clip)


RENDER_FILE = "render.json"


def renderer_digest() -> str:
  """sha1 of the source that decides a clip's pixels: a changed renderer changes the digest."""
  parts = (_texture, _motion, _paste, render_clip, write_mp4, _write_one)
  text = "".join(inspect.getsource(f) for f in parts) + repr(
    (CLASS_NAMES, FPS, _SPEED, _FAST, _SPIN, _GROW, _DISTRACTOR_SPEED, _MEAN, _STD,
     _BACKGROUND_CONTRAST))
  return hashlib.sha1(text.encode()).hexdigest()


def _check_render_settings(raw: str, settings: dict) -> None:
  """Records how `raw`'s clips are rendered; refuses to mix in clips rendered otherwise.

  Existing clips are reused (rendering is the slow part), so clips from an older renderer or
  other seed/size/frames would silently end up in the dataset next to new ones.
  """
  path = os.path.join(raw, RENDER_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old != settings:
      diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      raise ValueError(f"{raw} holds clips rendered with different {diff} ({path}); delete the "
                       "output directory or use a new --out.")
    return
  if os.path.isdir(raw) and any(n.endswith(".mp4") for _, _, names in os.walk(raw)
                                for n in names):
    raise ValueError(f"{raw} holds clips without {RENDER_FILE} (rendered by an older version, "
                     "possibly differently); delete the output directory or use a new --out.")
  os.makedirs(raw, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=1, sort_keys=True)


def make_demo(out: str, videos_per_class: int = 150, val_videos_per_class: int = 16,
              size: int = 32, frames: int = 8, seed: int = 0, workers: int | None = None,
              rotate90: bool = False) -> build_lib.BuildResult:
  """Writes the raw videos (skipping existing ones) and builds the shards into `out`.

  `rotate90` turns every clip by 90 degrees (class names kept), so the horizontal-motion classes
  move vertically and the vertical ones horizontally: a control for axis effects.
  """
  if size % 2 or size < 16 or frames < 4:
    raise ValueError(f"size must be even and >= 16, frames >= 4; got {size}, {frames}.")
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  _check_render_settings(os.path.join(out, "raw"), dict(seed=seed, size=size, frames=frames,
                                                         rotate90=rotate90,
                                                         renderer=renderer_digest()))
  jobs = []
  for split_index, (split, count) in enumerate(zip(SPLITS, (videos_per_class,
                                                            val_videos_per_class))):
    for cls in CLASS_NAMES:
      folder = os.path.join(out, "raw", split, cls)
      os.makedirs(folder, exist_ok=True)
      for video in range(count):
        path = os.path.join(folder, f"{cls}_{split}_{video:04d}.mp4")
        if not os.path.exists(path):
          jobs.append((path, cls, split_index, video, seed, size, frames, rotate90))
  with build_lib.process_pool(workers if jobs else 0) as pool:
    for _ in build_lib.ordered_map(_write_one, jobs, pool):
      pass
  return build_lib.build("folder", os.path.join(out, "raw"), out, short_side=max(size, 256),
                         workers=workers, num_shards=1, name="demo")


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-make-demo`: `make_demo`'s arguments, its defaults."""
  default = {k: p.default for k, p in inspect.signature(make_demo).parameters.items()}
  flags.DEFINE_string("out", None, "Output data dir (videos go to <out>/raw).", flag_values=fv,
                      required=True)
  for name, help_text in (("videos_per_class", "Train clips per class."),
                          ("val_videos_per_class", "Validation clips per class."),
                          ("size", "Frame height and width (even)."),
                          ("frames", "Frames per clip."), ("seed", "Rendering seed."),
                          ("workers", "Build processes (0: inline).")):
    flags.DEFINE_integer(name, default[name], help_text, flag_values=fv)
  flags.DEFINE_bool("rotate90", default["rotate90"], "Turn every clip by 90 degrees (axis "
                    "control; class names kept).", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  result = make_demo(args.out, args.videos_per_class, args.val_videos_per_class, args.size,
                     args.frames, args.seed, args.workers, args.rotate90)
  print(f"{result.out}: {len(result.class_names)} classes, "
        + ", ".join(f"{s}={n}" for s, n in result.split_sizes.items())
        + f", skipped {len(result.failures)}.")
  return 0


def run() -> None:
  """Console script `fstfl-make-demo`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

"""The synthetic demo dataset: classes differ only in motion; the built dataset has its sizes."""

import inspect
import subprocess
import sys

import numpy as np
import pytest
import simplejpeg

from configs import demo
from data_pipelines import make_demo
from data_pipelines.records import reading

import test_predict  # noqa: E402  (tests/ is on sys.path)

CLIPS_PER_CLASS, SIZE, FRAMES = 4, 48, 12


def _shifts(clip: np.ndarray) -> np.ndarray:
  """[T, H, W, 3] -> [T - 2, 2] (dx, dy): the shift between consecutive frame differences.

  Static background cancels in a frame difference, so the circular cross-correlation peak of
  two consecutive differences is the displacement of whatever moves most (the actor).
  """
  gray = clip.astype(np.float64).mean(-1)
  diff = np.fft.fft2(gray[1:] - gray[:-1])
  xc = np.fft.ifft2(diff[1:] * np.conj(diff[:-1])).real
  n = gray.shape[1]
  dy, dx = np.unravel_index(xc.reshape(len(xc), -1).argmax(1), (n, n))
  return np.stack([(dx + n // 2) % n - n // 2, (dy + n // 2) % n - n // 2], -1)


@pytest.fixture(scope="module")
def clips():
  return {cls: np.stack([make_demo.render_clip(cls, np.random.default_rng([7, c, k]), SIZE,
                                               FRAMES) for k in range(CLIPS_PER_CLASS)])
          for c, cls in enumerate(make_demo.CLASS_NAMES)}


def test_frames_have_the_same_statistics_in_every_class(clips):
  means = {cls: c.mean() for cls, c in clips.items()}
  stds = {cls: c.std() for cls, c in clips.items()}
  per_channel = {cls: c.mean((0, 1, 2, 3)) for cls, c in clips.items()}
  overall_mean, overall_std = np.mean(list(means.values())), np.mean(list(stds.values()))
  for cls in clips:
    assert abs(means[cls] - overall_mean) < 2.5, (cls, means[cls])
    assert abs(stds[cls] - overall_std) < 2.5, (cls, stds[cls])
    assert np.abs(per_channel[cls] - 128).max() < 4, (cls, per_channel[cls])


def test_motion_direction_and_speed_define_the_classes(clips):
  shift = {cls: np.stack([_shifts(c) for c in v]) for cls, v in clips.items()}  # [K, T-2, 2]
  median = {cls: np.median(s.reshape(-1, 2), 0) for cls, s in shift.items()}
  assert median["00_move_left"][0] < 0 and median["01_move_right"][0] > 0
  assert median["02_move_up"][1] < 0 and median["03_move_down"][1] > 0
  assert median["00_move_left"][1] == median["01_move_right"][1] == 0
  assert median["02_move_up"][0] == median["03_move_down"][0] == 0
  assert median["04_move_right_fast"][0] >= 5 > median["01_move_right"][0] >= 2
  half = (FRAMES - 2) // 2
  for cls, sign in (("05_pretend_move_right", 1), ("06_pretend_move_left", -1)):
    first = np.median(shift[cls][:, :half - 1, 0])
    last = np.median(shift[cls][:, half + 1:, 0])
    assert sign * first > 0 > sign * last, (cls, first, last)


def test_built_demo_sizes_names_and_decoded_motion(tmp_path):
  out = str(tmp_path)
  result = make_demo.make_demo(out, videos_per_class=2, val_videos_per_class=1, size=32,
                               frames=8, workers=0)
  info = reading.read_info(out)
  assert info.class_names == list(make_demo.CLASS_NAMES) == sorted(make_demo.CLASS_NAMES)
  assert info.split_sizes == result.split_sizes == {"train": 24, "validation": 12}
  assert result.failures == []
  train = list(reading.open_split(out, "train"))
  assert sorted(r["label"] for r in train) == sorted(list(range(12)) * 2)
  assert all((r["num_frames"], r["height"], r["width"]) == (8, 32, 32) for r in train)
  fast = [r for r in train if r["label"] == make_demo.CLASS_NAMES.index("04_move_right_fast")]
  decoded = np.stack([simplejpeg.decode_jpeg(f) for f in fast[0]["frames"]])
  assert np.median(_shifts(decoded)[:, 0]) >= 2  # Motion survives h264 + JPEG.


def test_default_sizes_match_the_demo_config():
  defaults = inspect.signature(make_demo.make_demo).parameters
  assert demo.NUM_CLASSES == len(make_demo.CLASS_NAMES)
  assert demo.TRAIN_SIZE == defaults["videos_per_class"].default * len(make_demo.CLASS_NAMES)
  assert demo.VAL_SIZE == defaults["val_videos_per_class"].default * len(make_demo.CLASS_NAMES)


def test_rerun_reuses_clips_only_when_rendered_the_same_way(tmp_path, monkeypatch):
  out = str(tmp_path)
  kwargs = dict(videos_per_class=1, val_videos_per_class=1, size=16, frames=4, workers=0)
  make_demo.make_demo(out, **kwargs)
  make_demo.make_demo(out, **kwargs)  # Same settings: the clips and the build are reused.
  with pytest.raises(ValueError, match=r"different \['seed'\]"):
    make_demo.make_demo(out, seed=1, **kwargs)
  monkeypatch.setattr(make_demo, "_BACKGROUND_CONTRAST", 0.5)  # A changed renderer.
  with pytest.raises(ValueError, match=r"different \['renderer'\]"):
    make_demo.make_demo(out, **kwargs)
  (tmp_path / "raw" / make_demo.RENDER_FILE).unlink()  # Clips of unknown provenance.
  with pytest.raises(ValueError, match="without render.json"):
    make_demo.make_demo(out, **kwargs)


def test_rotate90_turns_horizontal_motion_vertical(tmp_path):
  """The axis control: clip k of every class is the unrotated clip k turned counter-clockwise."""
  plain, turned = str(tmp_path / "plain"), str(tmp_path / "turned")
  kwargs = dict(videos_per_class=1, val_videos_per_class=1, size=32, frames=8, workers=0)
  make_demo.make_demo(plain, **kwargs)
  make_demo.make_demo(turned, rotate90=True, **kwargs)
  right = make_demo.CLASS_NAMES.index("04_move_right_fast")
  up = make_demo.CLASS_NAMES.index("02_move_up")

  def frames(out, label):
    record = next(r for r in reading.open_split(out, "train") if r["label"] == label)
    return np.stack([simplejpeg.decode_jpeg(f) for f in record["frames"]])

  a, b = frames(plain, right), frames(turned, right)
  # Same content up to the codecs (h264 + JPEG), turned by 90 degrees.
  assert np.abs(np.rot90(a, 1, axes=(1, 2)).astype(int) - b).mean() < 6
  assert np.abs(a.astype(int) - b).mean() > 15
  fast = np.median(_shifts(b), axis=0)
  assert fast[0] == 0 and fast[1] <= -2  # Moving right fast became moving up fast.
  moved_up = np.median(_shifts(frames(turned, up)), axis=0)
  assert moved_up[0] < 0 and moved_up[1] == 0  # Moving up became moving left.


def test_written_clips_repeat_bit_for_bit_on_a_busy_machine(tmp_path):
  """The demo's mp4s (and so the demo dataset and every number trained on it) must not depend
  on machine load. x264's CRF rate control gave this clip 2-3 different bitstreams in 30-60 writes
  while two other processes kept the cores busy; the constant quantiser gives one."""
  clip, _ = test_predict.render("red_square", np.random.default_rng([0, 1, 2]))
  busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
  try:
    written = set()
    for k in range(60):
      path = tmp_path / f"{k}.mp4"
      make_demo.write_mp4(str(path), clip)
      written.add(path.read_bytes())
  finally:
    for p in busy:
      p.kill()
      p.wait()
  assert len(written) == 1

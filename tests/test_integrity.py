"""Truncated videos of every container and frame folders with gaps fail the build, with reasons."""

import json
import os

import pytest

from data_pipelines import build
from data_pipelines import integrity
from data_pipelines import video_decode
from data_pipelines.records import reading
import video_fixtures

FRAMES = 30


def _cut(path: str, fraction: float) -> str:
  """A copy of `path` holding only its first `fraction` of bytes (a download cut short)."""
  with open(path, "rb") as f:
    data = f.read()
  root, ext = os.path.splitext(path)
  out = f"{root}_cut{ext}"
  with open(out, "wb") as f:
    f.write(data[:int(len(data) * fraction)])
  return out


def _task(path: str) -> video_decode.Task:
  return video_decode.Task(path, label=0, video_id=os.path.basename(path))


@pytest.mark.parametrize("ext,faststart", [(".webm", False), (".avi", False), (".mp4", True)])
def test_truncated_file_fails_and_good_file_decodes_whole(tmp_path, ext, faststart):
  good = video_fixtures.write_video(str(tmp_path / f"v{ext}"), num_frames=FRAMES, fps=12,
                                    faststart=faststart)
  record, reason = video_decode.make_record(_task(good))
  assert reason is None and record["num_frames"] == FRAMES
  record, reason = video_decode.make_record(_task(_cut(good, 0.7)))
  assert record is None
  if ext != ".mp4":  # PyAV stops quietly on cut VP9/mpeg4 data: the count is all that shows it.
    assert reason.startswith("IncompleteVideoError: decoded ")
    decoded = int(reason.split("decoded ")[1].split(" of")[0])
    assert 0 < decoded < 0.95 * FRAMES and f"of {FRAMES} frames" in reason
  else:  # A cut h264 stream raises in the decoder; it must fail either way.
    assert reason


def test_real_h264_clips_pass():
  for name in ("carphone_pristine.mp4", "bikes.mp4"):
    record, reason = video_decode.make_record(_task(video_fixtures.sample_clip(name)))
    assert reason is None, reason
    assert record["num_frames"] in (120, 250)


def test_frame_folder_with_gap_fails_and_corrupt_frame_fails(tmp_path):
  folder = str(tmp_path / "vid")
  video_fixtures.write_jpeg_folder(folder, num_frames=20)
  assert video_decode.make_record(_task(folder))[0]["num_frames"] == 20
  for i in (8, 9, 10):
    os.remove(os.path.join(folder, f"{i:05d}.jpg"))
  record, reason = video_decode.make_record(_task(folder))
  assert record is None
  assert reason.startswith("IncompleteVideoError: decoded 17 of 20 frames")
  assert "frame numbers 1..20" in reason

  other = str(tmp_path / "other")
  frames = video_fixtures.write_jpeg_folder(other, num_frames=5)
  with open(os.path.join(other, "00003.jpg"), "wb") as f:
    f.write(frames[2][:len(frames[2]) // 2])
  record, reason = video_decode.make_record(_task(other))
  assert record is None and "00003.jpg" in reason


def test_tolerance_allows_one_frame_but_not_a_clear_shortfall():
  integrity.check_complete(29, 30, "x")  # One frame: header rounding.
  integrity.check_complete(99, 100, "x")
  integrity.check_complete(5, None, "x")  # Nothing promised: nothing to check.
  with pytest.raises(integrity.IncompleteVideoError, match=r"decoded 28 of 30 frames"):
    integrity.check_complete(28, 30, "x")
  with pytest.raises(integrity.IncompleteVideoError, match=r"decoded 97 of 100"):
    integrity.check_complete(97, 100, "x")


def test_build_lists_truncated_videos_and_counts_them(tmp_path):
  src, out = tmp_path / "src", str(tmp_path / "out")
  for split in ("train", "validation"):
    for ext in (".webm", ".avi"):
      video_fixtures.write_video(str(src / split / "a" / f"ok{ext}"), num_frames=FRAMES, fps=12)
  for ext in (".webm", ".avi"):
    good = video_fixtures.write_video(str(tmp_path / "scratch" / f"b{ext}"), num_frames=FRAMES,
                                      fps=12)
    os.replace(_cut(good, 0.7), src / "train" / "a" / f"cut_{ext[1:]}{ext}")
  result = build.build("folder", str(src), out, workers=0)
  assert result.split_sizes == {"train": 2, "validation": 2}
  with open(os.path.join(out, build.FAILURES_FILE)) as f:
    listed = [json.loads(line) for line in f]
  assert sorted((f["split"], f["video_id"]) for f in listed) == [("train", "a/cut_avi"),
                                                                  ("train", "a/cut_webm")]
  assert all(f["reason"].startswith("IncompleteVideoError: decoded ") for f in listed)
  assert result.incomplete == 2
  settings = reading.read_info(out).settings
  assert settings["skipped"] == 2 and settings["incomplete"] == 2

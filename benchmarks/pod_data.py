r"""What a pod's data costs: per-host disk (copy mode), bucket requests and read speed (direct).

  python -m benchmarks.pod_data --table disk [--json out.json]
  python -m benchmarks.pod_data --table reads --bucket gs://BUCKET/tmp/pod_data [--json out.json]

`disk`: the bytes each host copies with `fstfl-copy-data --process_index I --process_count P`
for Kinetics-400 and Something-Something V2 at 4, 8, 16 and 64 hosts, computed with the
project's own shard assignment (`writing.shard_ranges` at the build's default shard size) and
per-process blocks (`reading.process_blocks`), and the GET requests per second a host and the
whole pod send in direct mode (`--config.input.data_dir=gs://...`: one bounded GET per frame)
at the compiler's v5e throughput estimate. Dataset sizes are the published video counts with
frames per video and bytes per frame measured by decoding real clips with the project's
decoder at the build's defaults (short side 256, JPEG quality 90): `DATASETS`.

`reads`: builds a synthetic data dir (whole 256x340 JPEG frames of ~25 kB, as the build stores
them), uploads it to `--bucket` and reads the same random 8-frame clips through
`records.source.SplitSource` from local disk, from the bucket with record offsets (bounded range
GETs, a clip's frames concurrently) and from the bucket without offsets (array-record's own GCS
reader): clips/s, GETs per clip and bytes on the wire per clip. The endpoint is whatever the
environment names (`data_pipelines.gcs`): real Cloud Storage on a cloud VM, or a local server.
"""

import json
import math
import tempfile
import time
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg
from absl import flags

from benchmarks import gcs_proxy
from data_pipelines import build
from data_pipelines import cli
from data_pipelines import copy_data
from data_pipelines import gcs
from data_pipelines import storage
from data_pipelines.records import reading
from data_pipelines.records import schema
from data_pipelines.records import writing

PROG = "benchmarks.pod_data"
HOSTS = (4, 8, 16, 64)
CHIPS_PER_HOST = 4          # v5e and v6e TPU VMs (v5litepod-N: N / 4 hosts).
CLIPS_PER_CHIP_S = 76       # Compiler estimate, v5e, fstfl, 8 frames, bf16 (docs/benchmarks.md).
FRAMES_PER_CLIP = 8
GCS_INITIAL_READS_S = 5000  # Cloud Storage's initial read capacity per bucket (its guidelines).
RAMP_DOUBLING_MIN = 20      # The guidelines' ramp: double the request rate every 20 minutes.
INDEX_BYTES_PER_VIDEO = 60  # `<shard>.videos.json`: id, label, frames, fps, height, width.
OFFSET_BYTES_PER_FRAME = 16  # `<shard>.offsets.npy`: two int64 per frame record.

# {dataset: {split: (videos, frames per video, bytes per frame)}}.
DATASETS = {
  "k400": {"train": (240_436, 291, 30_000), "validation": (19_787, 291, 30_000)},
  "sthv2": {"train": (168_913, 45, 25_000), "validation": (24_777, 45, 25_000)},
}


def host_bytes(videos: int, frames: int, frame_bytes: int, hosts: int) -> dict[str, float]:
  """Bytes of the largest host's part of one split (shards + its offsets; every index)."""
  shards = math.ceil(videos / build.RECORDS_PER_SHARD)
  per_shard = [len(r) for r in writing.shard_ranges(videos, shards)]
  blocks = reading.process_blocks(per_shard, hosts)
  largest = max(len(b.videos) for b in blocks)
  return dict(shards=shards, videos=largest,
              shard_bytes=largest * frames * frame_bytes,
              sidecar_bytes=videos * INDEX_BYTES_PER_VIDEO
              + largest * frames * OFFSET_BYTES_PER_FRAME)


def disk_table() -> tuple[list[dict], str]:
  rows, lines = [], [
    "| dataset | hosts | whole data dir | per host (train + val) | of which indices and "
    "offsets | share |", "|---|---:|---:|---:|---:|---:|"]
  for name, splits in DATASETS.items():
    whole = sum(v * f * b for v, f, b in splits.values())
    for hosts in HOSTS:
      parts = [host_bytes(*spec, hosts) for spec in splits.values()]
      total = sum(p["shard_bytes"] + p["sidecar_bytes"] for p in parts)
      side = sum(p["sidecar_bytes"] for p in parts)
      rows.append(dict(dataset=name, hosts=hosts, whole_bytes=whole, host_bytes=total,
                       sidecar_bytes=side))
      lines.append(f"| {name} | {hosts} | {whole / 1e12:.2f} TB | {total / 1e9:.1f} GB | "
                   f"{side / 1e9:.2f} GB | {total / whole:.1%} |")
  return rows, "\n".join(lines)


def requests_table() -> tuple[list[dict], str]:
  per_host = CLIPS_PER_CHIP_S * CHIPS_PER_HOST * FRAMES_PER_CLIP
  rows, lines = [], [
    f"GETs per host: {CLIPS_PER_CHIP_S} clips/s/chip x {CHIPS_PER_HOST} chips x "
    f"{FRAMES_PER_CLIP} frames = {per_host:,} GET/s (one bounded GET per frame).", "",
    "| hosts | pod GET/s | x initial bucket capacity | ramp to it (doubling every 20 min) |",
    "|---:|---:|---:|---:|"]
  for hosts in HOSTS:
    pod = per_host * hosts
    ratio = pod / GCS_INITIAL_READS_S
    ramp = RAMP_DOUBLING_MIN * max(0.0, math.log2(ratio))
    rows.append(dict(hosts=hosts, host_gets_s=per_host, pod_gets_s=pod, ramp_minutes=ramp))
    lines.append(f"| {hosts} | {pod:,} | {ratio:.1f}x | {ramp:.0f} min |")
  return rows, "\n".join(lines)


def synthetic_data(path: str, videos: int, frames: int) -> None:
  """Whole 256x340 frames as the build stores them: a smooth image with fine noise, ~30 kB as
  a JPEG at quality 90 (the size measured on real clips)."""
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)
  frame = cv2.resize(base, (340, 256), interpolation=cv2.INTER_LINEAR).astype(np.int16)
  frame = np.clip(frame + rng.integers(0, 3, frame.shape), 0, 255).astype(np.uint8)
  jpeg = simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=90)
  records = [dict(frames=[jpeg] * frames, label=v % 2, video_id=f"v{v}", fps=12.0, height=256,
                  width=340, num_frames=frames) for v in range(videos)]
  writing.write_split(path, "train", records, num_shards=4)
  writing.write_metadata(path, ["a", "b"], ["train"], dict(source="benchmark"))


def time_reads(source, clips: Sequence[tuple[int, list[int]]]) -> float:
  start = time.perf_counter()
  for video, ts in clips:
    source[video]["frames"].take(ts)
  return len(clips) / (time.perf_counter() - start)


def reads_table(bucket: str, videos: int, frames: int, num_clips: int) -> tuple[list[dict], str]:
  rng = np.random.default_rng(1)
  clips = [(int(rng.integers(videos)), sorted(rng.choice(frames, FRAMES_PER_CLIP,
                                                         replace=False).tolist()))
           for _ in range(num_clips)]
  rows = []
  with tempfile.TemporaryDirectory() as local:
    synthetic_data(local, videos, frames)
    frame_bytes = storage.size(reading.split_shards(local, "train")[0]) / (videos / 4 * frames)
    copy_data.copy_data_dir(local, bucket)
    bare = bucket.rstrip("/") + "_no_offsets"
    copy_data.copy_data_dir(local, bare)
    for name in storage.listdir(bare):
      if name.endswith(schema.OFFSETS_SUFFIX):
        storage.path(f"{bare}/{name}").unlink()
    for setting, data_dir in (("local disk", local), ("bucket, bounded range GETs", bucket),
                              ("bucket, array-record's GCS reader", bare)):
      source = reading.open_split(data_dir, "train")
      row = dict(setting=setting, clips_per_s=time_reads(source, clips[:4]))  # Warms up.
      if data_dir == bucket:  # Counted for bounded GETs only: array-record's own reader stalls
        # behind this proxy (it leaves connections open mid-response).
        proxy = gcs_proxy.Proxy(gcs.endpoint())
        with gcs.environment({k: proxy.url for k in gcs.EMULATOR_VARIABLES}):
          source = reading.open_split(data_dir, "train")
          time_reads(source, clips[:4])
          proxy.requests.clear()
          time_reads(source, clips)
        shard_gets = [r for r in proxy.requests if r[0] == "GET" and schema.parse_shard_name(
          r[1].rsplit("/", 1)[-1])]
        proxy.close()
        row.update(gets_per_clip=len(shard_gets) / len(clips),
                   wire_bytes_per_clip=sum(r[3] for r in shard_gets) / len(clips))
      row["clips_per_s"] = time_reads(source, clips)
      rows.append(row)
  lines = [f"{num_clips} random {FRAMES_PER_CLIP}-frame clips of {videos} videos x {frames} "
           f"frames, {frame_bytes / 1e3:.1f} kB per frame record, one reader thread; GETs and "
           "bytes of the shard files per clip, counted by a proxy in front of the endpoint:", "",
           "| source | clips/s | frames/s | GETs per clip | MB on the wire per clip |",
           "|---|---:|---:|---:|---:|"]
  lines += [f"| {r['setting']} | {r['clips_per_s']:.1f} | "
            f"{r['clips_per_s'] * FRAMES_PER_CLIP:.0f} | "
            + (f"{r['gets_per_clip']:.1f} | {r['wire_bytes_per_clip'] / 1e6:.3f} |"
               if "gets_per_clip" in r else "- | - |") for r in rows]
  return rows, "\n".join(lines)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `python -m benchmarks.pod_data` (see the module docstring)."""
  flags.DEFINE_enum("table", "disk", ["disk", "reads"], "Which table.", flag_values=fv)
  flags.DEFINE_string("bucket", None, "gs:// prefix to write the synthetic data to (reads).",
                      flag_values=fv)
  flags.DEFINE_integer("videos", 64, "Synthetic videos (reads).", flag_values=fv)
  flags.DEFINE_integer("frames", 48, "Frames per synthetic video (reads).", flag_values=fv)
  flags.DEFINE_integer("clips", 200, "Clips read per setting (reads).", flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the rows here.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  if args.table == "disk":
    disk_rows, disk = disk_table()
    request_rows, requests = requests_table()
    print(disk + "\n\n" + requests)
    out = dict(disk=disk_rows, requests=request_rows)
  else:
    if not args.bucket or not storage.is_remote(args.bucket):
      cli.usage_error(PROG, "--table reads needs --bucket gs://...")
    out, text = reads_table(args.bucket, args.videos, args.frames, args.clips)
    print(text)
  if args.json:
    storage.write_text(args.json, json.dumps(out, indent=1))
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

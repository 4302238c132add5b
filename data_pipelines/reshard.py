r"""fstfl-reshard: rewrite a data dir's shards without decoding a video, local or on a bucket.

  fstfl-reshard --src gs://bucket/data/k400 --out gs://bucket/data/k400_v3 \
      [--num_shards 1024] [--shuffle_seed 0]
  (the same as `python -m data_pipelines.reshard ...`)

What it fixes in a data dir built by an older version, at the cost of one read and one write of
the shards (the JPEG bytes are copied, never re-encoded, so every decoded clip is unchanged):

- record layout 1 (one record per video) becomes layout 2 (one record per frame);
- the train split is written in a seeded shuffled order, as `fstfl-build` writes it now, so that
  each process's block of the split (`records.reading.process_blocks`) holds every class in
  proportion; the validation split keeps its order;
- every shard gets its record offsets (`<shard>.offsets.npy`) for bounded reads from a bucket;
- `--num_shards` changes the shard count (a pod needs at least as many shards as processes).

Class names, build settings and `failures.jsonl` are kept. Resumable like a build: finished
shards of `--out` are skipped, and `<out>/.reshard_plan.json` makes a rerun with other inputs or
settings fail instead of mixing shards.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import flags
from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import build
from data_pipelines import cli
from data_pipelines import gcs
from data_pipelines import storage
from data_pipelines.records import reading
from data_pipelines.records import schema
from data_pipelines.records import writing

PROG = "fstfl-reshard"
PLAN_FILE = ".reshard_plan.json"
FAILURES_FILE = "failures.jsonl"
# Layout 1 keys -> tf.train.Example list kind.
V1_KINDS = {"frames": "bytes_list", "label": "int64_list", "video_id": "bytes_list",
            "fps": "float_list", "height": "int64_list", "width": "int64_list",
            "num_frames": "int64_list"}


def read_v1(serialized: bytes, where: str) -> dict[str, Any]:
  """One layout-1 record -> validated video dict (`schema.SCHEMA`); errors name `where`."""
  try:
    feature_map = tf_example_pb2.Example.FromString(serialized).features.feature
  except Exception as e:  # protobuf raises its own DecodeError type.
    raise ValueError(f"{where}: not a serialized tf.train.Example ({e}).") from e
  record = {}
  for key, kind in V1_KINDS.items():
    if key not in feature_map or feature_map[key].WhichOneof("kind") != kind:
      raise ValueError(f"{where}: missing key {key!r} (a {kind}); is this a layout-1 shard?")
    values = getattr(feature_map[key], kind).value
    record[key] = list(values) if key == "frames" else (values[0] if len(values) == 1 else None)
  return schema.validate_record(record, where)


Videos = tuple[int, Callable[[int], dict], int]  # (video count, i -> video, source shards).


def _v1_videos(src: str, split: str, names: Sequence[str]) -> Videos:
  """A layout-1 split: one record per video, no indices."""
  shards = sorted((parsed[1], name) for name in names
                  if (parsed := schema.parse_shard_name(name)) and parsed[0] == split)
  readers = [array_record_module.ArrayRecordReader(os.path.join(src, name))
             for _, name in shards]
  starts = np.cumsum([0] + [r.num_records() for r in readers]).tolist()

  def video(i: int) -> dict:
    shard = int(np.searchsorted(starts, i, side="right")) - 1
    reader = readers[shard]
    reader.seek(i - starts[shard])
    return read_v1(reader.read(), f"{src}/{shards[shard][1]} record {i - starts[shard]}")

  return starts[-1], video, len(shards)


def _v2_videos(src: str, split: str) -> Videos:
  """A layout-2 split; each video comes with all its frames."""
  source = reading.open_split(src, split)

  def video(i: int) -> dict:
    record = source[i]
    return dict(record, frames=record["frames"].take(range(record["num_frames"])))

  return len(source), video, len(source.paths)


def reshard(src: str, out: str, *, num_shards: int | None = None,
            shuffle_seed: int = 0) -> dict[str, int]:
  """Writes the rewritten copy of `src` to `out` (module docstring); returns videos per split."""
  for path in (src, out):
    gcs.check_reachable(path)
  settings = storage.read_json(storage.path(src) / schema.SETTINGS_FILE)
  layout = settings.get("record_layout", 1)
  if layout not in (1, schema.LAYOUT):
    raise cli.UserError(f"{src}: unknown record layout {layout}.")
  info_path = storage.path(src) / "dataset_info.json"
  name = storage.read_json(info_path).get("name", "videos") if info_path.exists() else "videos"
  names = storage.listdir(src)
  splits = list(settings["split_sizes"])
  storage.path(out).mkdir(parents=True, exist_ok=True)
  videos = {split: (_v1_videos(src, split, names) if layout == 1 else _v2_videos(src, split))
            for split in splits}
  shards = {split: min(num_shards or source_shards, max(1, count))
            for split, (count, _, source_shards) in videos.items()}
  plan = dict(src=os.fspath(src), layout=layout, shuffle_seed=shuffle_seed, num_shards=shards,
              videos={s: v[0] for s, v in videos.items()})
  build.check_plan(out, plan, PLAN_FILE, "reshard")
  for split, (count, video, _) in videos.items():
    order = (np.random.default_rng(shuffle_seed).permutation(count) if split == "train"
             else np.arange(count))
    done = writing.finished_shards(out, split, shards[split])
    for shard, block in enumerate(writing.shard_ranges(count, shards[split])):
      if shard in done:
        continue
      with writing.ShardWriter(out, split, shard, shards[split]) as writer:
        for i in block:
          writer.write(video(int(order[i])))
  failures = storage.path(src) / FAILURES_FILE
  if failures.exists():
    storage.copy_file(failures, storage.path(out) / FAILURES_FILE)
  kept = {k: v for k, v in settings.items()
          if k not in ("class_names", "split_sizes", "num_shards")}
  kept.update(num_shards=shards, **{schema.TRAIN_ORDER: dict(shuffle_seed=shuffle_seed)})
  sizes = writing.write_metadata(out, settings["class_names"], splits, kept, dataset_name=name)
  if sizes != settings["split_sizes"]:
    raise ValueError(f"{out}: wrote {sizes} videos, {src} lists {settings['split_sizes']}.")
  return sizes


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-reshard` (see the module docstring)."""
  flags.DEFINE_string("src", None, "Data dir to rewrite (local path or gs://).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("out", None, "Output data dir (local path or gs://).", flag_values=fv,
                      required=True)
  flags.DEFINE_integer("num_shards", None, "Shards per split (default: as in --src).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("shuffle_seed", 0, "Seed of the train split's order.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  if os.fspath(storage.path(args.src)) == os.fspath(storage.path(args.out)):
    cli.usage_error(PROG, "--out must differ from --src.")
  try:
    sizes = reshard(args.src, args.out, num_shards=args.num_shards,
                    shuffle_seed=args.shuffle_seed)
  except ValueError as e:
    raise cli.UserError(str(e)) from None
  print(f"{args.out}: record layout {schema.LAYOUT}, shuffled train order, record offsets; "
        + ", ".join(f"{s}={n}" for s, n in sizes.items()) + " videos.")
  return 0


def run() -> None:
  """Console script `fstfl-reshard`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

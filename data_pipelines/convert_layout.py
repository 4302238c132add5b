"""Converts a data dir of record layout 1 (one record per video) to layout 2 (one per frame).

  python -m data_pipelines.convert_layout --src /data/sthv1_shards --out /data/sthv1_shards_v2

Layout 1 is what `data_pipelines.build` wrote before frame records (`records.py`). The JPEG bytes
are copied, not re-encoded, so every decoded frame and clip is unchanged; splits, shard counts,
video order, class names, build settings and `failures.jsonl` are kept. Resumable like a build:
finished shards of `--out` are skipped. Rebuilding from the source videos with `fstfl-build`
gives the same result, at the cost of decoding every video again.
"""

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from absl import flags
from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import cli
from data_pipelines.records import reading
from data_pipelines.records import schema
from data_pipelines.records import writing

PROG = "data_pipelines.convert_layout"
# Layout 1 keys -> tf.train.Example list kind.
V1_KINDS = {"frames": "bytes_list", "label": "int64_list", "video_id": "bytes_list",
            "fps": "float_list", "height": "int64_list", "width": "int64_list",
            "num_frames": "int64_list"}
_FAILURES = "failures.jsonl"


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


def convert(src: str, out: str) -> dict[str, int]:
  """Writes the layout-2 copy of `src` to `out`; returns videos per split."""
  with open(os.path.join(src, schema.SETTINGS_FILE)) as f:
    settings = json.load(f)
  layout = settings.get("record_layout", 1)
  if layout != 1:
    raise ValueError(f"{src}: record layout {layout}, expected 1; nothing to convert.")
  with open(os.path.join(src, "dataset_info.json")) as f:
    name = json.load(f).get("name", "videos")
  splits = list(settings["split_sizes"])
  for split in splits:
    paths = reading.shard_paths(src, split)
    for shard, path in enumerate(paths):
      if writing.shard_is_done(out, split, shard, len(paths)):
        continue
      reader = array_record_module.ArrayRecordReader(path)
      try:
        with writing.ShardWriter(out, split, shard, len(paths)) as writer:
          for i in range(reader.num_records()):
            reader.seek(i)
            writer.write(read_v1(reader.read(), f"{path} record {i}"))
      finally:
        reader.close()
  if os.path.exists(os.path.join(src, _FAILURES)):
    shutil.copyfile(os.path.join(src, _FAILURES), os.path.join(out, _FAILURES))
  kept = {k: v for k, v in settings.items() if k not in ("class_names", "split_sizes")}
  sizes = writing.write_metadata(out, settings["class_names"], splits, kept, dataset_name=name)
  if sizes != settings["split_sizes"]:
    raise ValueError(f"{out}: converted {sizes} videos, {src} lists {settings['split_sizes']}.")
  return sizes


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `python -m data_pipelines.convert_layout`."""
  flags.DEFINE_string("src", None, "Layout-1 data dir.", flag_values=fv, required=True)
  flags.DEFINE_string("out", None, "Output data dir (layout 2).", flag_values=fv, required=True)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  if os.path.abspath(args.src) == os.path.abspath(args.out):
    cli.usage_error(PROG, "--out must differ from --src.")
  try:
    sizes = convert(args.src, args.out)
  except ValueError as e:
    raise cli.UserError(str(e)) from None
  print(f"{args.out}: record layout {schema.LAYOUT}, "
        + ", ".join(f"{s}={n}" for s, n in sizes.items()) + " videos.")
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

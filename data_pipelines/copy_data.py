r"""Copy a built data dir between a bucket and local disk (either direction), resumably.

  fstfl-copy-data --src gs://bucket/data/sthv1 --dst /mnt/disks/data/sthv1 \
      [--splits train,validation]
  fstfl-copy-data --src data/sthv1 --dst gs://bucket/data/sthv1   # after a local build
  (the same as `python -m data_pipelines.copy_data ...`)

ArrayRecord reads local files only, so on a TPU slice or GPU cluster every host copies the
shards it trains on to its own disk (run it on all hosts, e.g. `--worker=all`), and the
workdir stays on the bucket. Copies the metadata (TFDS JSON files, `build_settings.json`,
`failures.jsonl`, class names) and the shards of the chosen splits. A file already at the
destination with the same size is skipped, and each file is written whole (a temporary file
renamed into place locally, one upload on a bucket), so an interrupted copy is resumed by
running the same command again.
"""

import concurrent.futures
import os
import shutil
from collections.abc import Sequence

import tqdm
from absl import flags

from data_pipelines import cli
from data_pipelines import storage
from data_pipelines.records import reading
from data_pipelines.records import schema

PROG = "fstfl-copy-data"
_CHUNK = 64 << 20  # Bytes per read: bounds memory for multi-GB shards.


def _copy_file(src: str, dst: str) -> int:
  """Copies one file (streamed for local destinations); returns bytes copied (0 if skipped)."""
  source, target = storage.path(src), storage.path(dst)
  size = source.stat().length
  if target.exists() and target.stat().length == size:
    return 0
  if storage.is_remote(target):  # Streamed; the object appears when the upload completes.
    with source.open("rb") as fin, target.open("wb") as fout:
      shutil.copyfileobj(fin, fout, _CHUNK)
    return size
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = os.fspath(target) + ".partial"
  with source.open("rb") as fin, open(tmp, "wb") as fout:
    shutil.copyfileobj(fin, fout, _CHUNK)
  os.replace(tmp, os.fspath(target))
  return size


def _shard(name: str) -> tuple[str, int, int] | None:
  """A shard file or its video index -> (split, shard, num_shards); other names -> None."""
  return schema.parse_shard_name(name.removesuffix(schema.INDEX_SUFFIX))


def plan(src: str, splits: Sequence[str] | None) -> list[str]:
  """Names of the files to copy: top-level metadata plus the shards of `splits` (None: all)."""
  info = reading.read_info(src)  # Also checks that `src` is a built data dir.
  wanted = list(info.split_sizes) if splits is None else list(splits)
  unknown = sorted(set(wanted) - set(info.split_sizes))
  if unknown:
    raise cli.UserError(f"{src}: no split(s) {unknown}; it has {sorted(info.split_sizes)}.")
  names = []
  for child in storage.path(src).iterdir():
    shard = _shard(child.name)
    if shard is None:
      if not child.is_dir():
        names.append(child.name)
    elif shard[0] in wanted:
      names.append(child.name)
  present = {shard[0] for shard in map(_shard, names) if shard}
  missing = sorted(set(wanted) - present)
  if missing:
    raise cli.UserError(f"{src}: no shards for split(s) {missing}; rerun the build.")
  return sorted(names)


def copy_data_dir(src: str, dst: str, splits: Sequence[str] | None = None,
                  threads: int = 8) -> tuple[int, int]:
  """Copies a data dir; returns (files copied, bytes copied). Skips files already complete."""
  names = plan(src, splits)
  shards = [n for n in names if _shard(n) is not None]  # With their video indices.
  meta = [n for n in names if _shard(n) is None]
  copied = total = 0
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
      tqdm.tqdm(total=len(names), unit="file", desc="copy", disable=None) as bar:
    for batch in (shards, meta):  # Metadata last: readable metadata means complete shards.
      futures = [pool.submit(_copy_file, os.fspath(storage.path(src) / n),
                             os.fspath(storage.path(dst) / n)) for n in batch]
      for future in concurrent.futures.as_completed(futures):
        size = future.result()
        copied += size > 0
        total += size
        bar.update(1)
  return copied, total


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-copy-data` (see the module docstring)."""
  flags.DEFINE_string("src", None, "Data dir to copy (local path or gs://).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("dst", None, "Destination (local path or gs://).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("splits", None, "Comma-separated splits (default: all).", flag_values=fv)
  flags.DEFINE_integer("threads", 8, "Files copied in parallel.", lower_bound=1, flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  splits = args.splits.split(",") if args.splits else None
  files, size = copy_data_dir(args.src, args.dst, splits, args.threads)
  print(f"{args.dst}: copied {files} file(s), {size / 2**20:.1f} MiB; the rest was already there.")
  return 0


def run() -> None:
  """Console script `fstfl-copy-data`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

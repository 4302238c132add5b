r"""fstfl-copy-data: copy a data dir between a bucket and local disk, whole or one host's part.

  fstfl-copy-data --src gs://bucket/data/k400 --dst /mnt/disks/data/k400 \
      [--process_index I --process_count P] [--splits train,validation]
  fstfl-copy-data --src data/sthv1 --dst gs://bucket/data/sthv1   # after a local build
  (the same as `python -m data_pipelines.copy_data ...`)

On a pod each training process reads only its own contiguous block of every split
(`records.reading.process_blocks`), so each host needs only those shards: with
`--process_index I --process_count P` this command copies host I's shards (with their record
offsets), every shard's small video index and the metadata, which is all `open_split` needs on
that host. On
a Cloud TPU VM both default to this host's place in the slice (the worker number and the
number of workers, from the TPU environment or the VM's metadata), i.e. to what training will
see; elsewhere the default is the whole data dir. Run it on every host (`--worker=all`).

A file already at the destination with the same size is skipped, and each file is written whole
(a temporary file renamed into place locally, one upload on a bucket), so an interrupted copy is
resumed by running the same command again. Large shards are downloaded in parallel parts.
The metadata is copied last: readable metadata means the shards are there.
"""

import concurrent.futures
import os
import urllib.request
from collections.abc import Sequence

import tqdm
from absl import flags

from data_pipelines import cli
from data_pipelines import gcs
from data_pipelines import storage
from data_pipelines.records import reading
from data_pipelines.records import schema

PROG = "fstfl-copy-data"
_SIDECARS = (schema.INDEX_SUFFIX, schema.OFFSETS_SUFFIX)
_METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/{key}"


def _shard(name: str) -> tuple[str, int, int] | None:
  """A shard file or one of its sidecars -> (split, shard, num_shards); other names -> None."""
  for suffix in _SIDECARS:
    name = name.removesuffix(suffix)
  return schema.parse_shard_name(name)


def tpu_host() -> tuple[int, int] | None:
  """(this host's index, hosts) in a Cloud TPU slice, or None elsewhere.

  From the TPU runtime's environment (`TPU_WORKER_ID`, `TPU_WORKER_HOSTNAMES`; GKE and most
  images) or else from the VM's metadata server (`agent-worker-number`,
  `worker-network-endpoints`), as JAX itself finds its process index on a TPU VM; a multislice
  job (`MEGASCALE_SLICE_ID`, `MEGASCALE_NUM_SLICES`) counts the hosts of every slice.
  """
  worker, hosts = os.environ.get("TPU_WORKER_ID"), os.environ.get("TPU_WORKER_HOSTNAMES")
  if worker is None or not hosts:
    host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    try:
      values = []
      for key in ("agent-worker-number", "worker-network-endpoints"):
        request = urllib.request.Request(_METADATA_URL.format(host=host, key=key),
                                         headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(request, timeout=2) as response:
          values.append(response.read().decode())
    except (OSError, ValueError):
      return None
    worker, hosts = values
  count = len(hosts.split(","))
  slices = int(os.environ.get("MEGASCALE_NUM_SLICES", "1"))
  slice_id = int(os.environ.get("MEGASCALE_SLICE_ID", "0"))
  return slice_id * count + int(worker), slices * count


def plan(src: str, splits: Sequence[str] | None, process_index: int = 0,
         process_count: int = 1) -> tuple[list[str], list[str]]:
  """(shard files, other files) to copy: host `process_index`'s shards of `splits` (None: all)
  with their record offsets, every shard's video index, and the top-level metadata."""
  info = reading.read_info(src)  # Also checks that `src` is a built data dir that answers.
  wanted = list(info.split_sizes) if splits is None else list(splits)
  unknown = sorted(set(wanted) - set(info.split_sizes))
  if unknown:
    raise cli.UserError(f"{src}: no split(s) {unknown}; it has {sorted(info.split_sizes)}.")
  entries = storage.scandir(src)
  names = [name for name, is_dir in entries if not is_dir]
  shards, other = [], []
  for split in wanted:
    try:
      paths = reading.split_shards(src, split, names)
    except ValueError as e:
      raise cli.UserError(str(e)) from None
    counts = [len(ix["video_id"]) for ix in reading.read_indices(paths)]
    block = reading.process_blocks(counts, process_count)[process_index]
    shards += [os.path.basename(paths[s]) for s in block.shards]
  chosen = set(shards)
  for name in names:
    parsed = _shard(name)
    if parsed is None:
      other.append(name)
    elif parsed[0] in wanted and (name.endswith(schema.INDEX_SUFFIX) or (
        name.endswith(schema.OFFSETS_SUFFIX)
        and name.removesuffix(schema.OFFSETS_SUFFIX) in chosen)):
      other.append(name)  # Every index (the blocks need all sizes); this host's offsets.
  return sorted(shards), sorted(other)


def copy_data_dir(src: str, dst: str, splits: Sequence[str] | None = None, threads: int = 8,
                  process_index: int = 0, process_count: int = 1) -> tuple[int, int]:
  """Copies a data dir or one host's part of it; returns (files copied, bytes copied).

  Files already complete at `dst` are skipped. Shards and sidecars go first, the top-level
  metadata last.
  """
  if not 0 <= process_index < process_count:
    raise cli.UserError(f"--process_index {process_index} must be in 0..{process_count - 1} "
                        f"(--process_count {process_count}).")
  for path in (src, dst):
    gcs.check_reachable(path)
  shards, other = plan(src, splits, process_index, process_count)
  sidecars = [n for n in other if _shard(n) is not None]
  metadata = [n for n in other if _shard(n) is None]
  copied = total = 0
  # Two pools: a file task waits for its parts, which must never wait for a file's slot.
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as files, \
      concurrent.futures.ThreadPoolExecutor(max(1, threads)) as parts, \
      tqdm.tqdm(total=len(shards) + len(other), unit="file", desc="copy", disable=None) as bar:

    def copy(name: str) -> int:
      source, target = storage.path(src) / name, storage.path(dst) / name
      size = storage.size(source)
      if target.exists() and storage.size(target) == size:
        return 0
      storage.copy_file(source, target, pool=parts)
      return size

    for batch in (shards + sidecars, metadata):
      for size in files.map(copy, batch):
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
  flags.DEFINE_integer("threads", 8, "Files (and parts of a large file) copied in parallel.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("process_index", None, "Copy only this training process's (host's) "
                       "shards; default on a Cloud TPU VM: this host's worker number.",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("process_count", None, "Training processes (hosts) the split is divided "
                       "between; default on a Cloud TPU VM: the slice's hosts, elsewhere 1 (the "
                       "whole data dir).", lower_bound=1, flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  splits = args.splits.split(",") if args.splits else None
  index, count = args.process_index, args.process_count
  if index is None or count is None:
    host = tpu_host() if not storage.is_remote(args.dst) else None
    index = (host[0] if host else 0) if index is None else index
    count = (host[1] if host else 1) if count is None else count
  files, size = copy_data_dir(args.src, args.dst, splits, args.threads, index, count)
  part = f" (process {index} of {count})" if count > 1 else ""
  print(f"{args.dst}: copied {files} file(s), {size / 2**20:.1f} MiB{part}; the rest was "
        "already there.")
  return 0


def run() -> None:
  """Console script `fstfl-copy-data`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

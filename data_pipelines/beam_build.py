"""The shard build of `build.py` on Apache Beam: shards are decoded and written in parallel.

  python -m data_pipelines.beam_build --dataset k400 --src /shared/k400 --out /shared/k400_shards \
      [--split_id 1] [--short_side 256] [--quality 90] [--num_shards 1024] \
      -- --runner DirectRunner --direct_num_workers 8 --direct_running_mode multi_processing

The flags before `--` are `data_pipelines.build`'s (`--workers` is unused: Beam decides the
parallelism); everything after `--` goes to Beam's `PipelineOptions` (runner flags:
docs/data.md, "Running the build on Beam and Dataflow"). Beam is an optional extra with its own pins
(`requirements-beam.txt`, its own venv: it needs older numpy and protobuf than
`requirements.txt`).

Same plan, records, metadata and `failures.jsonl` as `build.build` for the same input and
settings, byte for byte (`tests_beam/`): the launcher parses the layout and checks
`.build_plan.json` (`build.prepare`); one Beam element per unfinished shard decodes that shard's
videos in the plan's order and writes it with the local builder's `build.write_shard` (staged
locally, failures first, the shard published last and atomically); the launcher then merges
failures and writes the metadata (`build.finish`). A rerun skips finished shards, so it is
idempotent and resumes a killed run (of either builder). Parallelism is the number of shards
(`--num_shards`): use a few per worker core. `--src` and `--out` are paths every worker can
read and write: `gs://` URLs (what Dataflow workers see), or a shared file system.
"""

import sys
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines import build
from data_pipelines import cli
from data_pipelines import ingest
from data_pipelines import video_decode
from data_pipelines.records import writing

PROG = "data_pipelines.beam_build"
# One shard to write: (out, split, shard, num_shards, entries, decode tasks of the entries).
ShardJob = tuple[str, str, int, int, list[ingest.Entry], list[video_decode.Task]]


def write_shard(job: ShardJob) -> Iterator[tuple[str, int]]:
  """Decodes and writes one shard; yields (split, failures) for the launcher's log."""
  out, split, shard, num_shards, entries, tasks = job
  if shard in writing.finished_shards(out, split, num_shards):  # A retried bundle.
    return
  failures = build.write_shard(out, split, shard, num_shards, entries,
                               map(video_decode.make_record, tasks))
  yield split, len(failures)


def jobs(plan: build.Plan) -> list[ShardJob]:
  """The unfinished shards of every split, in split then shard order."""
  out = []
  for split, entries in plan.layout.splits.items():
    for shard, block in build.pending_shards(plan.out, split, len(entries), plan.shards[split]):
      chosen = [entries[i] for i in block]
      out.append((plan.out, split, shard, plan.shards[split], chosen,
                  [plan.task(e) for e in chosen]))
  return out


def build_beam(dataset: str, src: str, out: str, split_id: int = 1, short_side: int = 256,
               quality: int = 90, num_shards: int | None = None, name: str | None = None,
               shuffle_seed: int = 0, beam_args: list[str] | None = None) -> build.BuildResult:
  """`build.build` with the shards written by a Beam pipeline (module docstring)."""
  plan = build.prepare(dataset, src, out, split_id, short_side, quality, num_shards, name,
                       shuffle_seed)
  pending = jobs(plan)
  if pending:
    options = PipelineOptions(beam_args or ["--runner", "DirectRunner"])
    with beam.Pipeline(options=options) as pipeline:
      _ = (pipeline
           | "Shards" >> beam.Create(pending)
           | "Spread" >> beam.Reshuffle()  # One shard per worker slot, not one bundle.
           | "DecodeAndWrite" >> beam.FlatMap(write_shard))
  return build.finish(plan, len(pending))


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  split_at = argv.index("--") if "--" in argv else len(argv)
  args = cli.parse_flags(argv[:split_at], build.define_flags, prog=PROG, doc=__doc__)
  result = build_beam(args.dataset, args.src, args.out, args.split_id, args.short_side,
                      args.quality, args.num_shards, args.name, args.shuffle_seed,
                      argv[split_at + 1:])
  print(build.summary(result))
  return 0


if __name__ == "__main__":
  cli.run_main(main, PROG)

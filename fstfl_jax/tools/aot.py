r"""Compiles the real train and eval steps for a Cloud TPU slice or NVIDIA GPUs, on any machine.

  fstfl-aot --config configs/sthv1.py:model=fstfl,frames=8 \
      --topology v5e:16x16 [--per_chip_batch 2] [--max_batch] [--json out.json] \
      [--config.model.dtype=bfloat16] [--eval_protocols all] [--stored_frame 256x340] \
      [--notrain]
  fstfl-aot ... --topology h100:1x8   # 1 host with 8 H100s (a100-80gb, a100-40gb)

No TPU is needed: with `jax[tpu]` installed (it brings libtpu) the TPU compiler runs on the host
against a described topology (`jax.experimental.topologies`), with the same jitted functions,
shardings and donation as a training run (`fstfl_jax.training.steps`). Per chip it reports the
compiler's HBM use (train state, temporaries, total against the chip's capacity), FLOPs and
bytes accessed, and from those a roofline step time, clips/s and MFU (`tools/roofline.py`).
These are compiler estimates, not measurements. The compiler counts a loop's body once: an eval
protocol with `views_per_step` runs the model in a loop, so that model call is compiled on its
own too and its cost added for the other trips. `correlation impl="auto"` resolves to the TPU
choice, as it would on the slice.

GPUs ("KIND:HOSTSxGPUS_PER_HOST", kinds in `gpu_targets.GPUS`; "chip" below means one GPU) need
the CUDA plugin wheels (`requirements-cuda-aot.txt`; no NVIDIA libraries or driver): XLA's GPU
compiler runs on the host against described GPUs (`gpu_targets.target_config`), without
autotuning (no device to time kernels on: cuDNN/cuBLAS get their default algorithms). The
plugin has no cost analysis for such a program, so FLOPs and bytes are counted on the host
instead (`host_cost`). `impl="auto"` resolves to the GPU choice.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags

from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.evaluation import protocols
from fstfl_jax.tools import compile_steps
from fstfl_jax.tools import roofline

PROG = "fstfl-aot"


def analyse(result: compile_steps.Compiled, chip: roofline.ChipSpec,
            num_chips: int) -> dict[str, Any]:
  """Per-chip HBM, cost and roofline estimates of one compiled step (all numbers per chip).

  HBM in use = arguments + outputs - donated (aliased) outputs + temporaries + program code.
  `optimal_seconds` is the compiler's own estimate, kept only when positive (it can be negative).
  """
  state = dict(result.state_bytes, total=sum(result.state_bytes.values()))
  if result.compiled is None:
    return dict(fits=False, error=result.error, state_bytes=state,
                clips_per_chip=result.clips_per_chip)
  mem = result.compiled.memory_analysis()
  cost = result.compiled.cost_analysis()
  hbm = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
         + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  flops, bytes_accessed = float(cost["flops"]), float(cost["bytes accessed"])
  if result.loop_trips > 1:
    # Counted once in `cost`; the other trips come on top (the program itself sets the memory).
    body = result.loop_body.cost_analysis()
    flops += (result.loop_trips - 1) * float(body["flops"])
    bytes_accessed += (result.loop_trips - 1) * float(body["bytes accessed"])
  roof = roofline.roofline(flops, bytes_accessed, chip)
  optimal = float(cost.get("optimal_seconds", -1.0))
  # GPU rows say where their FLOPs and bytes come from, and which library calls they hold.
  source = getattr(result.compiled, "cost_source", None)
  return dict(
    **(dict(cost_source=source, library_calls=cost["library_calls"]) if source else {}),
    fits=hbm <= chip.hbm_bytes,
    hbm_bytes_per_chip=hbm,
    hbm_capacity_bytes=chip.hbm_bytes,
    state_bytes=state,
    argument_bytes=mem.argument_size_in_bytes,
    temp_bytes=mem.temp_size_in_bytes,
    flops_per_step=flops,
    bytes_per_step=bytes_accessed,
    step_seconds_estimate=roof["step_seconds"],
    compute_seconds=roof["compute_seconds"],
    memory_seconds=roof["memory_seconds"],
    bound=roof["bound"],
    optimal_seconds=optimal if optimal > 0 else None,
    mfu_estimate=roofline.mfu(flops, roof["step_seconds"], chip),
    clips_per_chip=result.clips_per_chip,
    model_calls=result.loop_trips,
    **roofline.throughput(result.clips_per_chip, num_chips, roof["step_seconds"]),
  )


def _gib(n: float | None) -> str:
  return "-" if n is None else f"{n / 2**30:.2f} GiB"


def format_report(report: dict[str, Any]) -> str:
  """Human-readable lines of `run`'s report."""
  impl = report["correlation_impl"]
  lines = [f"{report['config']} on {report['topology']} ({report['num_chips']} chips, "
           f"HBM {_gib(report['chip']['hbm_bytes'])}/chip)"
           f"{f'; correlation impl {impl}' if impl else ''}. "
           "Compiler estimates per chip, not measurements."]
  sources = {r["cost_source"] for r in [report["train"] or {}, *report["eval"].values()]
             if r.get("cost_source")}
  lines += [f"FLOPs and bytes counted on the host ({source})." for source in sources]
  steps = ([("train", report["train"])] if report["train"] else []) + [
    (f"eval {k}", v) for k, v in report["eval"].items()]
  for name, r in steps:
    if r.get("error"):
      lines.append(f"{name}: does NOT fit ({r['error']})")
      continue
    opt = r["optimal_seconds"]
    lines.append(
      f"{name}: {r['clips_per_chip']} clips/chip"
      f"{f' in {calls} model calls' if (calls := r['model_calls']) > 1 else ''} | "
      f"HBM {_gib(r['hbm_bytes_per_chip'])} "
      f"(state {_gib(r['state_bytes']['total'])}, temp {_gib(r['temp_bytes'])}) "
      f"{'fits' if r['fits'] else 'DOES NOT FIT'} | {r['flops_per_step'] / 1e12:.3f} TFLOP, "
      f"{r['bytes_per_step'] / 1e9:.2f} GB | step {1e3 * r['step_seconds_estimate']:.2f} ms "
      f"({r['bound']}-bound; compiler optimal "
      f"{'n/a' if opt is None else f'{1e3 * opt:.2f} ms'}) | "
      f"{r['clips_per_sec_per_chip']:.1f} clips/s/chip, {r['clips_per_sec_per_slice']:.0f} "
      f"clips/s/slice | MFU {100 * r['mfu_estimate']:.1f}%")
  if "max_per_chip_batch" in report:
    lines.append(f"largest per-chip train batch that fits: {report['max_per_chip_batch']}")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, topology: str, *, per_chip_batch: int | None = None,
        eval_protocols: tuple[str, ...] = (), eval_per_chip_batch: int | None = None,
        find_max_batch: bool = False,
        stored_frame: tuple[int, int] = compile_steps.DEFAULT_STORED_FRAME,
        compile_train: bool = True, config_name: str = "") -> dict[str, Any]:
  """Compiles and analyses the train step and the eval step of each protocol; returns a report.

  Per-chip batches default to the config's global batches split over the chips (at least 1).
  `compile_train=False` compiles only the eval steps (report["train"] is then None).
  """
  chip = roofline.chip_spec(topology)
  mesh = compile_steps.topology_mesh(topology)
  chips = mesh.size
  per_chip_batch = per_chip_batch or max(1, config.input.batch_size // chips)
  eval_per_chip_batch = eval_per_chip_batch or max(1, config.input.eval_batch_size // chips)
  platform = compile_steps.mesh_platform(mesh)
  train = (compile_steps.compile_train_step(config, mesh, per_chip_batch, stored_frame)
           if compile_train else None)
  report = dict(config=config_name, topology=topology, num_chips=chips,
                chip=dataclasses.asdict(chip),
                correlation_impl=(compile_steps.for_platform(config, chips, platform).model.stc.impl
                                  if config.model.name == "fstfl" else None),
                global_batch=per_chip_batch * chips,
                train=analyse(train, chip, chips) if train else None,
                eval={name: analyse(compile_steps.compile_eval_step(
                  config, mesh, name, eval_per_chip_batch), chip, chips)
                      for name in eval_protocols})
  if find_max_batch and compile_train:
    report["max_per_chip_batch"] = roofline.max_batch(
      lambda n: analyse(compile_steps.compile_train_step(config, mesh, n, stored_frame), chip,
                        chips).get("hbm_bytes_per_chip"),
      chip.hbm_bytes, {0: report["train"]["state_bytes"]["total"],
                       per_chip_batch: report["train"].get("hbm_bytes_per_chip", float("inf"))})
  return report


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-aot` besides `--config` (see the module docstring)."""
  flags.DEFINE_string("topology", "v5e:2x2",
                      "TPU topology, e.g. v5e:2x2, v5e:16x16, v6e:2x2, or GPUs as "
                      "KIND:HOSTSxGPUS_PER_HOST, e.g. h100:1x8, a100-80gb:1x8, a100-40gb:1x8.",
                      flag_values=fv)
  flags.DEFINE_integer("per_chip_batch", None,
                       "Train clips per chip (default: input.batch_size / chips, at least 1).",
                       flag_values=fv)
  flags.DEFINE_integer("eval_per_chip_batch", None, "Eval videos per chip (default: "
                       "input.eval_batch_size / chips, at least 1).", flag_values=fv)
  flags.DEFINE_string("eval_protocols", "train",
                      "Eval steps to compile: 'train' (the in-training protocol), 'all', "
                      "'' (none) or names of config.evals separated by commas.", flag_values=fv)
  flags.DEFINE_bool("max_batch", False, "Also search the largest per-chip train batch that fits.",
                    flag_values=fv)
  flags.DEFINE_bool("train", True, "Compile the train step (--notrain: only the eval steps).",
                    flag_values=fv)
  flags.DEFINE_string("stored_frame", "x".join(map(str, compile_steps.DEFAULT_STORED_FRAME)),
                      "HEIGHTxWIDTH of the stored frames the host ships to the train step "
                      "(the data dir's frame size; build's default short side is 256).",
                      flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the report as JSON to this path.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__, config=True)
  config = args.config
  if args.eval_protocols == "all":
    names = tuple(sorted(config.evals))
  elif args.eval_protocols == "train":
    names = (protocols.training_protocol(config),)
  else:
    names = tuple(p for p in args.eval_protocols.split(",") if p)
  for name in names:
    protocols.protocol_views(config, name)  # One clear error for a bad name, before compiling.
  stored_frame = compile_steps.parse_frame_size(args.stored_frame)
  if args.max_batch and not args.train:
    raise cli.UserError("--max_batch searches the train step's batch: drop --notrain")
  report = run(config, args.topology, per_chip_batch=args.per_chip_batch,
               eval_protocols=names, eval_per_chip_batch=args.eval_per_chip_batch,
               find_max_batch=args.max_batch, stored_frame=stored_frame,
               compile_train=args.train, config_name=args["config"].config_filename)
  print(format_report(report), flush=True)
  if args.json:
    storage.write_json(args.json, report, indent=1)
  steps = [report["train"], *report["eval"].values()]
  return 0 if all(step["fits"] for step in steps if step) else 1


def run_cli() -> None:
  """Console script `fstfl-aot`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run_cli()

r"""Compiles the real train and eval steps for a Cloud TPU slice, on any machine, and estimates.

  fstfl-aot --config configs/sthv1.py:model=fstfl,frames=8 \
      --topology v5e:16x16 [--per_chip_batch 2] [--max_batch] [--json out.json] \
      [--config.model.dtype=bfloat16] [--eval_protocols all] [--stored_frame 256x340] \
      [--notrain]

No TPU is needed: with `jax[tpu]` installed (it brings libtpu) the TPU compiler runs on the host
against a described topology (`jax.experimental.topologies`), with the same jitted functions,
shardings and donation as a training run (`fstfl_jax.training.steps`). Per chip it reports the
compiler's HBM use (train state, temporaries, total against the chip's capacity), FLOPs and
bytes accessed, and from those a roofline step time, clips/s and MFU (`tools/roofline.py`).
These are compiler estimates, not measurements. The compiler counts a loop's body once: an eval
protocol with `views_per_step` runs the model in a loop, so that model call is compiled on its
own too and its cost added for the other trips. `correlation impl="auto"` resolves to the TPU
choice, as it would on the slice.
"""

import dataclasses
import functools
import os
import time
from typing import Any

# libtpu looks for TPU hardware and metadata at start-up; describing a local single-host
# accelerator quiets that search. JAX_PLATFORMS=cpu keeps JAX itself on the host.
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes a machine-wide lock file by default; a compile-only client need not (and other
# JAX processes on the host, which also load the plugin, may hold it).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from collections.abc import Sequence  # noqa: E402

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from data_pipelines import cli  # noqa: E402
from data_pipelines import device_transforms  # noqa: E402
from data_pipelines import storage  # noqa: E402
from data_pipelines import transforms  # noqa: E402
from fstfl_jax.evaluation import protocols  # noqa: E402
from fstfl_jax.models import build_model  # noqa: E402
from fstfl_jax.models import correlation  # noqa: E402
from fstfl_jax.tools import roofline  # noqa: E402
from fstfl_jax.training import sharding as sharding_lib  # noqa: E402
from fstfl_jax.training import steps as steps_lib  # noqa: E402
from fstfl_jax.training import train  # noqa: E402

PROG = "fstfl-aot"

# Stored frame size (height, width) the train step is compiled for by default: a 4:3 video at
# the build's default short side of 256.
DEFAULT_STORED_FRAME = (256, 340)

# Substrings of the TPU compiler's error when a program needs more HBM than the chip has.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory")


def topology_mesh(topology: str) -> jax.sharding.Mesh:
  """The project's `('data',)` mesh over every chip of a described TPU topology ("v5e:2x2")."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  return jax.make_mesh((len(devices),), (sharding_lib.DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def for_tpu(config: ml_collections.ConfigDict, global_batch: int) -> ml_collections.ConfigDict:
  """A copy of `config` as a TPU run would resolve it: `global_batch` clips, auto kernel -> TPU."""
  config = config.copy_and_resolve_references()
  config.input.batch_size = global_batch  # Also what the lr schedule scales with.
  # Only the lr schedule depends on the epoch size, not the compiled program: one step per epoch
  # when the config leaves it to the data dir (no data dir is read here).
  if config.train.num_train_examples <= 0:
    config.train.num_train_examples = global_batch
  config.model.stc.impl = correlation.resolve_impl(config.model.stc.impl, "tpu")
  return config


def tree_bytes(tree: Any) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class Compiled:
  """One compiled step (None when the compiler ran out of HBM) and its train-state sizes.

  `loop_body` is compiled on its own when the step runs it in a loop (`loop_trips` > 1 times):
  the compiler's cost analysis counts a loop body once, whatever its trip count.
  """
  compiled: Any
  state_bytes: dict[str, int]
  clips_per_chip: int
  error: str = ""
  loop_body: Any = None
  loop_trips: int = 1


def aot_compile(jitted: Any, mesh: jax.sharding.Mesh, *args: Any,
                what: str = "step") -> tuple[Any, str]:
  """AOT-compiles; an out-of-HBM error becomes (None, message) since it answers 'fits?'.

  Logs the start and the duration: a full ResNet-50 step takes 10-45 minutes on a 2-core host.
  """
  logging.info("Compiling the %s for %d TPU chips (minutes for a full model)...", what, mesh.size)
  started = time.monotonic()
  try:
    with jax.set_mesh(mesh):
      compiled = jitted.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if any(m in str(e) for m in _OOM_MARKERS):
      logging.info("The %s does not fit (compiler out of HBM after %.0f s).", what,
                   time.monotonic() - started)
      return None, str(e).splitlines()[0][:300]
    raise
  logging.info("Compiled the %s in %.0f s.", what, time.monotonic() - started)
  return compiled, ""


def _abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  # Outside any TPU mesh context: build() makes a PRNG key eagerly, on the host.
  model = build_model(config.model)
  tx, schedule, _, abstract = train.build(config, model, mesh)
  sizes = dict(params=tree_bytes(abstract.params), batch_stats=tree_bytes(abstract.batch_stats),
               opt_state=tree_bytes(abstract.opt_state))
  return model, tx, schedule, abstract, sizes


def parse_frame_size(text: str) -> tuple[int, int]:
  """"256x340" -> (256, 340): height x width of the stored frames the host ships."""
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    height = width = 0
  if height < 1 or width < 1:
    raise cli.UserError(f"--stored_frame {text!r}: expected HEIGHTxWIDTH in pixels of the data "
                        "dir's stored frames, e.g. 256x340")
  return height, width


def compile_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       per_chip_batch: int,
                       stored_frame: tuple[int, int] = DEFAULT_STORED_FRAME) -> Compiled:
  """`steps.make_train_step` jitted by `steps.jit_train_step`, for `per_chip_batch` clips/chip.

  Batch as the input pipeline ships it (`data_pipelines.pipeline`), sharded on B =
  per_chip_batch * chips: video uint8 [B, T, R, Wmax, 3] (whole stored frames of size
  `stored_frame`, in `transforms.frame_slot` slots), frame_width int32 [B], resize_taps float32
  [B, 2, S, 3], label int32 [B]; the step crops, resizes and mirrors on the device.
  """
  config = for_tpu(config, per_chip_batch * mesh.size)
  model, tx, schedule, abstract, sizes = _abstract_state(config, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  step = steps_lib.jit_train_step(steps_lib.make_train_step(model, tx, schedule),
                                  mesh, state_sharding)
  b, t, s = config.input.batch_size, config.model.num_frames, config.input.crop_size
  rows, wmax = transforms.frame_slot([stored_frame])
  data = sharding_lib.data_sharding(mesh)
  batch = {"video": jax.ShapeDtypeStruct((b, t, rows, wmax, 3), jnp.uint8, sharding=data),
           device_transforms.WIDTH_KEY: jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
           device_transforms.TAPS_KEY: jax.ShapeDtypeStruct((b, 2, s, 3), jnp.float32,
                                                            sharding=data),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)}
  compiled, error = aot_compile(step, mesh, abstract, batch,
                                what=f"train step at {per_chip_batch} clips/chip")
  return Compiled(compiled, sizes, per_chip_batch, error)


def compile_eval_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, protocol: str,
                      per_chip_batch: int) -> Compiled:
  """`protocols.protocol_step` for protocol `config.evals[protocol]` (all V views per video).

  Batch: video uint8 [B, V, T, S, S, 3], label int32 [B], mask bool [B], B = per_chip_batch *
  chips videos; `clips_per_chip` counts views (B * V / chips).
  """
  clips, crops = protocols.protocol_views(config, protocol)
  config = for_tpu(config, config.input.batch_size)
  model, _, _, abstract, sizes = _abstract_state(config, mesh)
  sizes.pop("opt_state")
  variables = dict(params=abstract.params, batch_stats=abstract.batch_stats)
  step = protocols.protocol_step(config, protocol, model)
  b, v = per_chip_batch * mesh.size, clips * crops
  t, s = config.model.num_frames, config.input.crop_size
  data = sharding_lib.data_sharding(mesh)
  batch = dict(video=jax.ShapeDtypeStruct((b, v, t, s, s, 3), jnp.uint8, sharding=data),
               label=jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
               mask=jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=data))
  compiled, error = aot_compile(step, mesh, variables, batch,
                                what=f"eval step {protocol} at {per_chip_batch} videos/chip")
  per_call = config.evals[protocol].get("views_per_step") or v
  body = None
  if compiled is not None and per_call < v:
    # The step walks the views in v / per_call model calls (lax.map); the body is one call.
    call_input = jax.ShapeDtypeStruct((b * per_call, t, s, s, 3), jnp.uint8, sharding=data)
    body, _ = aot_compile(jax.jit(functools.partial(model.apply, train=False)), mesh, variables,
                          call_input, what=f"model call of the {protocol} loop")
  return Compiled(compiled, sizes, per_chip_batch * v, error, body, v // per_call)


def analyse(result: Compiled, chip: roofline.ChipSpec, num_chips: int) -> dict[str, Any]:
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
  return dict(
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
        find_max_batch: bool = False, stored_frame: tuple[int, int] = DEFAULT_STORED_FRAME,
        compile_train: bool = True, config_name: str = "") -> dict[str, Any]:
  """Compiles and analyses the train step and the eval step of each protocol; returns a report.

  Per-chip batches default to the config's global batches split over the chips (at least 1).
  `compile_train=False` compiles only the eval steps (report["train"] is then None).
  """
  chip = roofline.chip_spec(topology)
  mesh = topology_mesh(topology)
  chips = mesh.size
  per_chip_batch = per_chip_batch or max(1, config.input.batch_size // chips)
  eval_per_chip_batch = eval_per_chip_batch or max(1, config.input.eval_batch_size // chips)
  report = dict(config=config_name, topology=topology, num_chips=chips,
                chip=dataclasses.asdict(chip),
                correlation_impl=(for_tpu(config, chips).model.stc.impl
                                  if config.model.name == "fstfl" else None),
                global_batch=per_chip_batch * chips,
                train=(analyse(compile_train_step(config, mesh, per_chip_batch, stored_frame),
                               chip, chips) if compile_train else None),
                eval={name: analyse(compile_eval_step(config, mesh, name, eval_per_chip_batch),
                                    chip, chips) for name in eval_protocols})
  if find_max_batch and compile_train:
    report["max_per_chip_batch"] = roofline.max_batch(
      lambda n: analyse(compile_train_step(config, mesh, n, stored_frame), chip,
                        chips).get("hbm_bytes_per_chip"),
      chip.hbm_bytes, {0: report["train"]["state_bytes"]["total"],
                       per_chip_batch: report["train"].get("hbm_bytes_per_chip", float("inf"))})
  return report


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-aot` besides `--config` (see the module docstring)."""
  flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:2x2, v5e:16x16, v6e:2x2.",
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
  flags.DEFINE_string("stored_frame", "x".join(map(str, DEFAULT_STORED_FRAME)),
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
  stored_frame = parse_frame_size(args.stored_frame)
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

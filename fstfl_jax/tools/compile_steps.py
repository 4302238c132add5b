"""Compiles the real train and eval steps for described accelerators (no device needed).

A Cloud TPU slice ("v5e:2x2", `jax.experimental.topologies` with libtpu) or NVIDIA GPU hosts
("h100:1x8", the CUDA plugin and `gpu_targets`): the same jitted functions, shardings and
donation as a training run (`fstfl_jax.training.steps`), on the input pipeline's batch. A
compile that runs out of device memory answers "does not fit" instead of failing. Used by
`fstfl_jax.tools.aot`, which turns the results into estimates.
"""

import contextlib
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

from data_pipelines import cli  # noqa: E402
from data_pipelines import device_transforms  # noqa: E402
from data_pipelines import transforms  # noqa: E402
from fstfl_jax.evaluation import protocols  # noqa: E402
from fstfl_jax.models import build_model  # noqa: E402
from fstfl_jax.models import correlation  # noqa: E402
from fstfl_jax.tools import gpu_targets  # noqa: E402
from fstfl_jax.tools import host_cost  # noqa: E402
from fstfl_jax.training import sharding as sharding_lib  # noqa: E402
from fstfl_jax.training import steps as steps_lib  # noqa: E402
from fstfl_jax.training import train  # noqa: E402


# Stored frame size (height, width) the train step is compiled for by default: a 4:3 video at
# the build's default short side of 256.
DEFAULT_STORED_FRAME = (256, 340)

# Substrings of the TPU compiler's error when a program needs more HBM than the chip has.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory")


def topology_mesh(topology: str) -> jax.sharding.Mesh:
  """The project's `('data',)` mesh over every chip of a described TPU topology ("v5e:2x2") or
  every GPU of described GPU hosts ("h100:1x8", `gpu_targets.parse_topology`)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  gpu = gpu_targets.parse_topology(topology)
  if gpu:
    kind, hosts, per_host = gpu
    devices = topologies.get_topology_desc(
      platform="cuda", target_config=gpu_targets.target_config(gpu_targets.GPUS[kind]),
      topology=gpu_targets.cuda_topology_name(hosts, per_host)).devices
  else:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  return jax.make_mesh((len(devices),), (sharding_lib.DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
  """"tpu" or "gpu": what `jax.default_backend()` says on the hardware the mesh describes."""
  return mesh.devices.flat[0].platform


def for_platform(config: ml_collections.ConfigDict, global_batch: int,
            platform: str = "tpu") -> ml_collections.ConfigDict:
  """A copy of `config` as a run on `platform` would resolve it: `global_batch` clips, the auto
  correlation kernel -> that platform's."""
  config = config.copy_and_resolve_references()
  config.input.batch_size = global_batch  # Also what the lr schedule scales with.
  # Only the lr schedule depends on the epoch size, not the compiled program: one step per epoch
  # when the config leaves it to the data dir (no data dir is read here).
  if config.train.num_train_examples <= 0:
    config.train.num_train_examples = global_batch
  config.model.stc.impl = correlation.resolve_impl(config.model.stc.impl, platform)
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
  A backend without cost analysis (GPUs) gets a `host_cost.HostCostCompiled` instead of the
  plain result.
  """
  tpu = mesh_platform(mesh) == "tpu"
  logging.info("Compiling the %s for %d %s (minutes for a full model)...", what, mesh.size,
               "TPU chips" if tpu else "GPUs")
  # The CUDA plugin's compile-only client cannot load an executable back ("PjRtCompiler must be
  # constructed with a Client to call DeserializeLoadedExecutable"): a persistent compilation
  # cache would store GPU programs for nothing and warn on every later hit.
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
  no_cache = contextlib.nullcontext() if tpu else jax_config.enable_compilation_cache(False)
  started = time.monotonic()
  try:
    with jax.set_mesh(mesh), no_cache:
      lowered = jitted.lower(*args)
      compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if any(m in str(e) for m in _OOM_MARKERS):
      logging.info("The %s does not fit (compiler out of HBM after %.0f s).", what,
                   time.monotonic() - started)
      return None, str(e).splitlines()[0][:300]
    raise
  logging.info("Compiled the %s in %.0f s.", what, time.monotonic() - started)
  if compiled.cost_analysis() is None:
    compiled = host_cost.HostCostCompiled(
      compiled, host_cost.host_cost_analysis(lowered, compiled, mesh.size))
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
  config = for_platform(config, per_chip_batch * mesh.size, mesh_platform(mesh))
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
  config = for_platform(config, config.input.batch_size, mesh_platform(mesh))
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

"""GPU ahead-of-time compile of the real train/eval steps for described NVIDIA GPUs, no GPU.

Needs the CUDA plugin wheels of requirements-cuda-aot.txt, which scripts/test.sh installs into
the directory .venv/cuda-aot, off .venv's own path (without a GPU the plugin prints "Could not
find cuda drivers" lines in every JAX process that can import it), and runs this file on its
own with PYTHONPATH=.venv/cuda-aot. Its name keeps it out of the main `pytest tests` run.
"""

import jax
import jax.numpy as jnp
import jax_cuda12_plugin  # noqa: F401  (fails here, loudly, without the plugin on the path)
import pytest

from configs import demo  # noqa: E402
from data_pipelines import transforms  # noqa: E402
from fstfl_jax.models import correlation  # noqa: E402
from fstfl_jax.tools import aot  # noqa: E402
from fstfl_jax.tools import compile_steps  # noqa: E402
from fstfl_jax.tools import gpu_targets  # noqa: E402
from fstfl_jax.tools import host_cost  # noqa: E402
from fstfl_jax.tools import model_info  # noqa: E402
from fstfl_jax.tools import roofline  # noqa: E402

H100 = roofline.chip_spec("h100:1x8")


@pytest.mark.parametrize("kind", sorted(gpu_targets.GPUS))
def test_the_compiler_takes_each_target_config(kind):
  from jax.experimental import topologies
  mesh = compile_steps.topology_mesh(f"{kind}:2x4")
  devices = list(mesh.devices.flat)
  assert len(devices) == 8 and compile_steps.mesh_platform(mesh) == "gpu"
  assert {d.device_kind for d in devices} == {gpu_targets.GPUS[kind].description}
  assert sorted({d.process_index for d in devices}) == [0, 1]  # Two hosts of four.
  # The plugin parses the text strictly: a field XLA does not know is an error, so every field
  # name above is one of XLA's.
  text = gpu_targets.target_config(gpu_targets.GPUS[kind])
  with pytest.raises(Exception, match="GpuTargetConfigProto"):
    topologies.get_topology_desc(platform="cuda", topology="1x1x8",
                                 target_config=text.replace("core_count", "sm_count"))


def test_one_convolution_cost_is_exact():
  """A convolution alone: FLOPs 2 x MACs per device, and the cuDNN call moves its input, filter
  and output once, the bytes `host_cost_analysis` adds for a custom call."""
  mesh = compile_steps.topology_mesh("h100:1x8")
  data = jax.sharding.NamedSharding(mesh, jax.P("data"))
  x = jax.ShapeDtypeStruct((16, 18, 18, 32), jnp.bfloat16, sharding=data)
  w = jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.bfloat16,
                           sharding=jax.sharding.NamedSharding(mesh, jax.P()))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  compiled, error = compile_steps.aot_compile(conv, mesh, x, w, what="convolution")
  assert error == "" and isinstance(compiled, host_cost.HostCostCompiled)
  assert "__cudnn$convForward" in compiled.as_text()
  cost = compiled.cost_analysis()
  per_device = 16 // 8
  assert cost["flops"] == 2 * per_device * 16 * 16 * 64 * 3 * 3 * 32
  assert cost["library_calls"] == {"__cudnn$convForward": 1}
  # bf16: input, filter, output; no autotuning, so no cuDNN workspace (u8[0]).
  assert cost["library_call_bytes"] == 2 * (per_device * 18 * 18 * 32 + 3 * 3 * 32 * 64
                                            + per_device * 16 * 16 * 64)
  assert cost["bytes accessed"] >= cost["library_call_bytes"]


# --- A real GPU compile of a small config (the TPU test's config, tests/test_aot.py). ---

def _small_config():
  config = demo.get_config("model=fstfl,frames=4")
  config.model.update(width=8, dtype="bfloat16")
  config.model.stc.max_disp = 1
  config.input.update(crop_size=32, resize_short=32, batch_size=16, eval_batch_size=8)
  return config


STORED_FRAME = (36, 48)


@pytest.fixture(scope="module")
def report():
  return aot.run(_small_config(), "h100:1x8", eval_protocols=("val_1x1",),
                 stored_frame=STORED_FRAME, config_name="configs/demo.py")


def test_train_step_compiles_for_h100s_and_fits(report):
  train = report["train"]
  assert report["num_chips"] == 8 and report["global_batch"] == 16
  assert train["clips_per_chip"] == 2
  # impl="auto" compiles what a GPU run would resolve, not the host's or the TPU's choice.
  assert report["correlation_impl"] == correlation.resolve_impl("auto", "gpu") == "allpairs"
  assert report["chip"]["hbm_bytes"] == gpu_targets.GPUS["h100"].device_memory_bytes
  assert train["fits"] and 0 < train["hbm_bytes_per_chip"] < H100.hbm_bytes
  assert train["temp_bytes"] > 0
  assert "lowered program" in train["cost_source"]
  # The convolutions of forward and backward run in cuDNN.
  assert {"__cudnn$convForward", "__cudnn$convBackwardInput",
          "__cudnn$convBackwardFilter"} <= set(train["library_calls"])
  assert train["step_seconds_estimate"] == pytest.approx(
    max(train["flops_per_step"] / H100.peak_flops, train["bytes_per_step"] / H100.hbm_bandwidth))
  assert 0 < train["mfu_estimate"] <= 1


def test_memory_holds_the_state_and_the_batch(report):
  """Replicated float32 params and SGD momentum per GPU, plus 2 clips of stored frames."""
  params = model_info.model_info(_small_config().model, size=32)["params"]
  state = report["train"]["state_bytes"]
  assert state["params"] == 4 * params and 4 * params <= state["opt_state"] <= 4 * params + 16
  rows, wmax = transforms.frame_slot([STORED_FRAME])
  frames_per_gpu = 2 * 4 * rows * wmax * 3  # 2 clips x 4 frames, uint8.
  train = report["train"]
  assert train["argument_bytes"] >= state["total"] + frames_per_gpu
  # Arguments + outputs - donated outputs (they reuse the state's buffers) + temporaries.
  assert train["hbm_bytes_per_chip"] >= train["argument_bytes"] + train["temp_bytes"]
  # A step reads at least its whole input once.
  assert train["bytes_per_step"] >= train["argument_bytes"]


def test_flops_against_the_forward_macs(report):
  """FLOPs of the lowered program per GPU against the model's MACs (`model_info`).

  Eval: forward only, 2 x MACs per clip; measured 1.02x (the rest: batch norm, activations,
  the allpairs correlation's extra pairs). Train: forward + backward, about 3x that (the stem's
  input gradient is not needed, so slightly less), plus the device crop/resize, loss and SGD
  update; measured 1.02x of 6 x MACs per clip. The tolerance leaves room for those, and for
  nothing as large as a missing backward convolution (-1/3) or a missing layer.
  """
  macs = model_info.model_info(_small_config().model, size=32)["macs"]
  train, ev = report["train"], report["eval"]["val_1x1"]
  assert ev["clips_per_chip"] == 1
  assert 1.0 <= ev["flops_per_step"] / (2 * macs) < 1.1
  assert 0.95 <= train["flops_per_step"] / (6 * macs * train["clips_per_chip"]) < 1.15
  assert ev["fits"] and 0 < ev["hbm_bytes_per_chip"] < train["hbm_bytes_per_chip"]
  assert "opt_state" not in ev["state_bytes"]
  assert "train: 2 clips/chip" in aot.format_report(report)

"""TPU ahead-of-time compile of the real train/eval steps (libtpu on CPU) and the roofline maths."""

import json
import logging
import re

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from data_pipelines import transforms
from data_pipelines import cli
from fstfl_jax.models import correlation
from fstfl_jax.tools import aot
from fstfl_jax.tools import compile_steps  # Sets the libtpu environment before a client starts.
from fstfl_jax.tools import host_cost
from fstfl_jax.tools import model_info
from fstfl_jax.tools import roofline

V5E = roofline.CHIPS["v5e"]


# --- Roofline, MFU and throughput against hand-computed values. ---

def test_memory_bound_roofline():
  # 0.394 TFLOP and 13.1 GB on a v5e: 2 ms of compute, 16 ms of HBM traffic.
  r = roofline.roofline(0.394e12, 13.104e9, V5E)
  assert r["compute_seconds"] == pytest.approx(0.394e12 / 197e12)  # 2.0 ms
  assert r["memory_seconds"] == pytest.approx(0.016)                 # 13.104e9 / 819e9
  assert r["step_seconds"] == pytest.approx(0.016)
  assert r["bound"] == "memory"
  assert r["arithmetic_intensity"] == pytest.approx(0.394e12 / 13.104e9)


def test_compute_bound_roofline_and_mfu():
  # 918 TFLOP/s v6e: 9.18 TFLOP take 10 ms; 1.638 GB at 1640 GB/s take ~1 ms.
  v6e = roofline.chip_spec("v6e:2x2")
  r = roofline.roofline(9.18e12, 1.64e9, v6e)
  assert r["step_seconds"] == pytest.approx(0.010)
  assert r["bound"] == "compute"
  assert roofline.mfu(9.18e12, r["step_seconds"], v6e) == pytest.approx(1.0)
  # Memory-bound at 16 ms with 0.394 TFLOP on a v5e: 0.394 / (0.016 * 197) = 12.5%.
  assert roofline.mfu(0.394e12, 0.016, V5E) == pytest.approx(0.125, rel=1e-3)


def test_throughput():
  t = roofline.throughput(clips_per_chip=4, num_chips=256, step_seconds=0.02)
  assert t["clips_per_sec_per_chip"] == pytest.approx(200.0)
  assert t["clips_per_sec_per_slice"] == pytest.approx(51_200.0)


def test_unknown_generation_names_the_choices():
  with pytest.raises(ValueError, match=r"'v9x:2x2'.*v5e"):
    roofline.chip_spec("v9x:2x2")


CAPACITY = 16e9


def _search(hbm, known):
  calls = []

  def measured(n):
    calls.append(n)
    return hbm(n)

  return roofline.max_batch(measured, CAPACITY, known, limit=100), calls


@pytest.mark.parametrize("per_clip", [0.4e9, 0.6e9, 1.1e9, 3e9, 15.5e9, 17e9])
def test_max_batch_linear_memory_takes_two_compiles(per_clip):
  """Memory linear in the batch: the line through two points finds n, one more compile checks."""
  state = 0.2e9
  hbm = lambda n: state + per_clip * n if state + per_clip * n <= CAPACITY else None
  largest = max([n for n in range(1, 101) if state + per_clip * n <= CAPACITY] + [0])
  found, calls = _search(hbm, {0: state, 1: hbm(1) or float("inf")})
  assert found == largest
  assert len(calls) <= 2
  assert largest + 1 in calls or largest == 0  # The first n that does not fit was compiled.


@pytest.mark.parametrize("largest", [1, 2, 5, 37, 64, 100])
def test_max_batch_curved_memory_still_exact(largest):
  """Memory growing faster than the line (the compiler's choices change with n): still exact,
  with O(log n) compiles, and a compile that runs out of memory (None) counts as not fitting."""
  state = 1e9
  grow = (CAPACITY - state) / largest**2
  hbm = lambda n: min(state + grow * n * n, CAPACITY) if n <= largest else (
    None if n % 2 else CAPACITY + 1)
  found, calls = _search(hbm, {0: state, 1: hbm(1)})
  assert found == largest
  assert len(calls) <= 2 * 7 + 2
  assert len(set(calls)) == len(calls)  # No batch compiled twice.


def test_max_batch_when_nothing_fits():
  assert _search(lambda n: None, {0: 20e9})[0] == 0
  found, calls = _search(lambda n: 1e9 + 16e9 * (n > 0), {0: 1e9, 4: float("inf")})
  assert found == 0 and calls == [2, 1]


def test_stored_frame_flag():
  assert compile_steps.parse_frame_size("256x340") == (256, 340)
  with pytest.raises(cli.UserError, match=r"--stored_frame '256'.*HEIGHTxWIDTH"):
    compile_steps.parse_frame_size("256")


def test_compile_logs_what_it_compiles_and_how_long_it_took(caplog):
  """Full-model compiles take minutes each (several for --max_batch): each says so."""
  mesh = compile_steps.topology_mesh("v5e:2x2")
  x = jax.ShapeDtypeStruct((8, 128), jnp.float32,
                           sharding=jax.sharding.NamedSharding(mesh, jax.P("data")))
  with caplog.at_level(logging.INFO):
    compiled, error = compile_steps.aot_compile(jax.jit(lambda v: 2 * v), mesh, x, what="tiny step")
  assert compiled is not None and error == ""
  assert "Compiling the tiny step for 4 TPU chips" in caplog.text
  assert re.search(r"Compiled the tiny step in \d+ s", caplog.text)


# --- A real TPU compile of a small config. ---

def _small_config():
  config = demo.get_config("model=fstfl,frames=4")
  config.model.update(width=8, dtype="bfloat16")
  config.model.stc.max_disp = 1
  config.input.update(crop_size=32, resize_short=32, batch_size=8, eval_batch_size=4)
  return config


STORED_FRAME = (36, 48)  # Whole stored frames, cropped to 32x32 inside the step.


@pytest.fixture(scope="module")
def report():
  return aot.run(_small_config(), "v5e:2x2", eval_protocols=("val_1x1",),
                 stored_frame=STORED_FRAME, config_name="configs/demo.py")


def test_train_step_compiles_and_fits(report):
  train = report["train"]
  assert report["num_chips"] == 4 and report["global_batch"] == 8
  # impl="auto" compiles the TPU choice, not the host's (cpu: allpairs).
  assert report["correlation_impl"] == correlation.resolve_impl("auto", "tpu") == "einsum"
  assert train["clips_per_chip"] == 2
  assert train["fits"] and 0 < train["hbm_bytes_per_chip"] <= V5E.hbm_bytes
  assert train["step_seconds_estimate"] > 0 and 0 < train["mfu_estimate"] <= 1
  assert train["step_seconds_estimate"] == pytest.approx(
    max(train["flops_per_step"] / V5E.peak_flops, train["bytes_per_step"] / V5E.hbm_bandwidth))
  # Every JSON key the tool promises, and the report serialises.
  for key in ("fits", "hbm_bytes_per_chip", "flops_per_step", "bytes_per_step",
              "step_seconds_estimate", "mfu_estimate"):
    assert key in train
  json.dumps(report)


def test_state_bytes_match_the_parameter_count(report):
  """Replicated float32 params: 4 bytes x the model's parameter count on every chip."""
  params = model_info.model_info(_small_config().model, size=32)["params"]
  state = report["train"]["state_bytes"]
  assert state["params"] == 4 * params
  # SGD momentum: one trace per parameter, plus the schedule's step counter.
  assert 4 * params <= state["opt_state"] <= 4 * params + 16
  # The batch is what the input pipeline ships: whole stored frames in slots, not crops.
  rows, wmax = transforms.frame_slot([STORED_FRAME])
  frames_per_chip = 2 * 4 * rows * wmax * 3  # 2 clips x 4 frames, uint8.
  assert rows * wmax >= 36 * 48
  assert report["train"]["argument_bytes"] >= state["total"] + frames_per_chip


def test_train_flops_against_the_forward_macs(report):
  """A train step does forward + backward: about 3x the forward's 2 x MACs per clip.

  The compiler also counts BN, activations and the optimizer update, which weigh a lot in
  this 8-wide net, hence the loose upper bound.
  """
  macs = model_info.model_info(_small_config().model, size=32)["macs"]
  forward = 2 * macs * report["train"]["clips_per_chip"]
  assert 2.5 * forward < report["train"]["flops_per_step"] < 8 * forward


def test_eval_step_compiles(report):
  ev = report["eval"]["val_1x1"]
  assert ev["fits"] and ev["clips_per_chip"] == 1  # 4 videos x 1 view over 4 chips.
  assert 0 < ev["flops_per_step"] < report["train"]["flops_per_step"]
  assert "opt_state" not in ev["state_bytes"]
  assert "train: 2 clips/chip" in aot.format_report(report)
  # --notrain: the report has only the eval steps.
  lines = aot.format_report(dict(report, train=None)).splitlines()
  assert len(lines) == 2 and lines[1].startswith("eval val_1x1: 1 clips/chip")


def test_eval_cost_counts_every_model_call_of_the_views_loop():
  """views_per_step < V runs the model in a loop, whose body the compiler's cost analysis
  counts once: 3 views per call of 6 must cost what all 6 at once cost, not half of it."""
  config = _small_config()
  config.evals.val_2x3.views_per_step = None  # All 6 views in one model call.
  config.evals.val_2x3_by_3 = dict(clips=2, crops=3, views_per_step=3)  # Two calls.
  report = aot.run(config, "v5e:2x2", eval_protocols=("val_2x3", "val_2x3_by_3"),
                   stored_frame=STORED_FRAME, compile_train=False)
  once, looped = report["eval"]["val_2x3"], report["eval"]["val_2x3_by_3"]
  assert (once["model_calls"], looped["model_calls"]) == (1, 2)
  assert once["clips_per_chip"] == looped["clips_per_chip"] == 6
  assert looped["flops_per_step"] == pytest.approx(once["flops_per_step"], rel=0.02)
  # The weights are read once per call, so the loop moves somewhat more bytes, never half.
  assert once["bytes_per_step"] * 0.9 < looped["bytes_per_step"] < once["bytes_per_step"] * 2


# --- Described NVIDIA GPUs: target configs, topology names, HLO byte counts (no plugin). ---

def _parse_text_proto(text):
  """Protobuf text format of nested messages and scalar fields -> nested dicts (ints, floats,
  strings); enough for `gpu_targets.target_config`, which repeats no field."""
  tokens = re.findall(r'"[^"]*"|[{}]|[^\s{}:"]+', text)

  def value(token):
    for kind in (int, float):
      try:
        return kind(token)
      except ValueError:
        pass
    return token.strip('"')

  def message(i):
    fields = {}
    while i < len(tokens) and tokens[i] != "}":
      key = tokens[i]
      assert key not in fields, f"repeated field {key}"
      if tokens[i + 1] == "{":
        fields[key], i = message(i + 2)
        i += 1  # The closing "}".
      else:
        fields[key], i = value(tokens[i + 1]), i + 2
    return fields, i

  fields, end = message(0)
  assert end == len(tokens)
  return fields


# Published facts, written out here apart from the module: SMs, FP32 cores per SM, compute
# capability, L2 (MiB), shared memory per SM (KiB), HBM bandwidth (GB/s), nominal HBM (GB),
# dense bf16 peak (TFLOP/s). NVIDIA's H100/A100 whitepapers and datasheets, CUDA's tables.
GPU_FACTS = {
  "h100": (132, 128, (9, 0), 50, 228, 3350, 80, 989),
  "a100-80gb": (108, 64, (8, 0), 40, 164, 2039, 80, 312),
  "a100-40gb": (108, 64, (8, 0), 40, 164, 1555, 40, 312),
}


@pytest.mark.parametrize("kind", sorted(GPU_FACTS))
def test_gpu_target_config_says_the_published_facts(kind):
  from fstfl_jax.tools import gpu_targets
  sms, cores, cc, l2, smem, bandwidth, memory_gb, peak = GPU_FACTS[kind]
  spec = gpu_targets.GPUS[kind]
  config = _parse_text_proto(gpu_targets.target_config(spec))
  device = config.pop("gpu_device_info")
  assert config == {"platform_name": "CUDA", "device_description_str": spec.description,
                    "dnn_version_info": dict(major=9, minor=8, patch=0),
                    "runtime_version": dict(major=12, minor=9, patch=0)}
  capability = device.pop("cuda_compute_capability")
  assert (capability["major"], capability["minor"]) == cc
  assert capability["feature_extension"] == ("ACCELERATED_FEATURES" if cc == (9, 0) else "NONE")
  assert (device["core_count"], device["fpus_per_core"]) == (sms, cores)
  assert device["l2_cache_size"] == l2 * 2**20
  assert device["shared_memory_per_core"] == smem * 1024
  # CUDA reserves 1 KB of shared memory per block for itself.
  assert device["shared_memory_per_block_optin"] == (smem - 1) * 1024
  assert device["memory_bandwidth"] == bandwidth * 10**9
  # The driver keeps some of the nominal "80GB" (80 GiB of HBM) / "40GB" for itself.
  assert (memory_gb - 1.5) * 2**30 < device["device_memory_size"] < memory_gb * 2**30
  assert device["clock_rate_ghz"] == pytest.approx(1.98 if kind == "h100" else 1.41)
  # CUDA's limits for compute capability 8.x/9.0, under XLA's names ("block dim" = grid).
  assert device == dict(
    device, threads_per_block_limit=1024, threads_per_warp=32, threads_per_core_limit=2048,
    shared_memory_per_block=48 * 1024, registers_per_core_limit=65536,
    registers_per_block_limit=65536, block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535,
    block_dim_limit_z=65535, thread_dim_limit_x=1024, thread_dim_limit_y=1024,
    thread_dim_limit_z=64)
  assert len(device) == 20
  # The roofline uses the same GPU: dense bf16 peak, bandwidth and memory.
  chip = roofline.chip_spec(f"{kind}:1x8")
  assert chip.peak_flops == peak * 1e12
  assert chip.hbm_bandwidth == device["memory_bandwidth"]
  assert chip.hbm_bytes == device["device_memory_size"]


def test_gpu_topology_names():
  from fstfl_jax.tools import gpu_targets
  assert gpu_targets.parse_topology("h100:1x8") == ("h100", 1, 8)
  assert gpu_targets.parse_topology("a100-40gb:2x4") == ("a100-40gb", 2, 4)
  assert gpu_targets.cuda_topology_name(2, 4) == "1x2x4"
  assert gpu_targets.parse_topology("v5e:2x2") is None  # A TPU topology: not a GPU kind.
  for bad in ("h100:8", "h100:0x8", "h100:1x8x2", "h100:"):
    with pytest.raises(ValueError, match=r"KIND:HOSTSxGPUS_PER_HOST.*'h100:1x8'"):
      gpu_targets.parse_topology(bad)


def test_hlo_shape_bytes():
  """Shapes as the optimised HLO prints them; element sizes from the type name."""
  conv = ("%cudnn-conv.1 = (bf16[4,56,56,64]{3,2,1,0}, u8[0]{0}) custom-call(%param, %w), "
          "window={size=3x3 pad=1_1x1_1}, custom_call_target=\"__cudnn$convForward\"")
  assert host_cost._result_shape(conv) == "(bf16[4,56,56,64]{3,2,1,0}, u8[0]{0})"
  assert host_cost._hlo_shape_bytes(host_cost._result_shape(conv)) == 4 * 56 * 56 * 64 * 2
  assert host_cost._result_shape("%p = f32[8,128]{1,0} parameter(0), sharding={replicated}") == (
    "f32[8,128]{1,0}")
  assert host_cost._hlo_shape_bytes("(pred[3], s4[3], f8e4m3fn[10], c64[2], f32[], token[])") == (
    3 + 2 + 10 + 16 + 4)
  assert host_cost._hlo_shape_bytes("((f32[2,2], s32[]), bf16[5])") == 16 + 4 + 10

"""TPU ahead-of-time compile of the real train/eval steps (libtpu on CPU) and the roofline maths."""

import json

import pytest

from configs import demo
from fstfl_jax.tools import aot  # Before any TPU client starts: sets the libtpu environment.
from fstfl_jax.models import correlation
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


@pytest.mark.parametrize("largest", [0, 1, 5, 6, 37, 64, 100])
def test_max_batch_search(largest):
  calls = []

  def fits(n):
    calls.append(n)
    return n <= largest

  assert aot.max_batch(fits, limit=100) == largest
  assert len(calls) <= 2 * 7 + 1  # Doubling then bisecting: O(log2(limit)) compiles.


# --- A real TPU compile of a small config. ---

def _small_config():
  config = demo.get_config("model=fstfl,frames=4")
  config.model.update(width=8, dtype="bfloat16")
  config.model.stc.max_disp = 1
  config.input.update(crop_size=32, resize_short=32, batch_size=8, eval_batch_size=4)
  return config


@pytest.fixture(scope="module")
def report():
  return aot.run(_small_config(), "v5e:2x2", eval_protocols=("val_1x1",),
                 config_name="configs/demo.py")


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
  assert report["train"]["argument_bytes"] >= state["total"]


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

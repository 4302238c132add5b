"""MAC counter against closed forms; the model table against the reference PyTorch counts.

Reference numbers (docs/gsf.md#cost, docs/stc.md#cost-budget) were measured on the official
GSF code with torch's FlopCounter (conv + linear, MACs = FLOPs / 2), 174 classes, 224x224.
"""

import functools
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import pytest

from configs import common
from fstfl_jax.models import flops
from fstfl_jax.tools import model_info

REPO = pathlib.Path(__file__).resolve().parent.parent


def _spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _module_costs(module, *shapes):
  """Counted ops of `module.apply` on inputs of the given shapes (nothing allocated)."""
  inputs = [_spec(*s) for s in shapes]
  variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  return flops.count_ops(module.apply, variables, *inputs)


# --- The counter on hand-computable modules. ---

def test_strided_grouped_conv():
  conv = nn.Conv(6, (3, 3), strides=2, feature_group_count=2, padding=((1, 1), (1, 1)))
  costs = _module_costs(conv, (2, 9, 9, 4))
  # Output [2, 5, 5, 6]; each output element sums 3x3 taps over 4/2 input channels.
  assert flops.total_macs(costs) == (2 * 5 * 5 * 6) * (3 * 3 * 2)
  assert [c.primitive for c in costs] == ["conv_general_dilated"]


def test_depthwise_3d_conv():
  conv = nn.Conv(8, (3, 3, 3), feature_group_count=8, padding="SAME")
  assert flops.total_macs(_module_costs(conv, (1, 4, 5, 5, 8))) == (4 * 5 * 5 * 8) * 27


def test_dense_with_batch_axes():
  dense = nn.Dense(7)
  assert flops.total_macs(_module_costs(dense, (2, 3, 5))) == 2 * 3 * 7 * 5


def test_batched_einsum():
  costs = flops.count_ops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
                          _spec(4, 3, 5), _spec(4, 5, 6))
  assert flops.total_macs(costs) == 4 * 3 * 6 * 5


class _Cell(nn.Module):
  @nn.compact
  def __call__(self, carry, x):
    return nn.Dense(5, name="mix")(carry) + x, None


def test_scan_counts_body_times_length():
  scanned = nn.scan(_Cell, variable_broadcast="params", split_rngs={"params": False},
                    length=4)(name="rnn")
  costs = _module_costs(scanned, (3, 5), (4, 3, 5))
  assert flops.total_macs(costs) == 4 * (3 * 5 * 5)
  assert all(c.scope[-1] == "mix" for c in costs)


class _Stack(nn.Module):
  """Two conv blocks, one rematerialised, to check remat and the module scopes."""

  @nn.compact
  def __call__(self, x):
    x = nn.remat(nn.Conv)(4, (3, 3), name="remat_conv")(x)
    return nn.Conv(2, (1, 1), name="plain_conv")(x)


def test_remat_and_scopes():
  costs = _module_costs(_Stack(), (1, 6, 6, 3))
  by_module = flops.group_macs(costs, lambda scope: scope[-1])
  assert by_module == {"remat_conv": 36 * 4 * 9 * 3, "plain_conv": 36 * 2 * 4}


def test_jit_custom_vjp_and_cond():
  @jax.custom_vjp
  def project(a, w):
    return a @ w
  project.defvjp(lambda a, w: (a @ w, (a, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))

  def fn(a, w):
    y = jax.jit(project)(a, w)                        # 2 x 4 x 3 = 24
    return lax.cond(y.sum() > 0, lambda y: y @ jnp.ones((4, 6)),  # 2 x 6 x 4 = 48
                    lambda y: y[:, :1] * jnp.ones((1, 6)), y)  # no MACs; the max wins

  assert flops.total_macs(flops.count_ops(fn, _spec(2, 3), _spec(3, 4))) == 24 + 48


def test_while_with_macs_is_refused():
  def fn(a):
    return lax.while_loop(lambda c: c.sum() < 10.0, lambda c: c @ jnp.eye(3), a)

  with pytest.raises(ValueError, match="while loop"):
    flops.count_ops(fn, _spec(3, 3))


def test_param_count():
  variables = jax.eval_shape(nn.Dense(7).init, jax.random.key(0), _spec(2, 5))
  assert flops.param_count(variables["params"]) == 5 * 7 + 7


# --- The correlation's exact count. ---

def test_correlation_closed_form():
  assert flops.correlation_frame_pairs(8, (0, 1, 2, 3)) == 8 + 7 + 6 + 5
  assert flops.correlation_frame_pairs(4, (-2, 0, 1)) == 2 + 4 + 3
  assert flops.correlation_frame_pairs(4, (-2, 0, 1), boundary="clamp") == 12
  assert flops.correlation_frame_pairs(4, (0, 5)) == 4
  # docs/stc.md#cost-budget: 26 valid pairs x 784 positions x 169 displacements x 512 channels.
  assert flops.correlation_macs((1, 8, 28, 28, 512), 6, (0, 1, 2, 3)) == 1_763_786_752
  assert flops.correlation_macs((2, 8, 28, 28, 512), 6, (0, 1, 2, 3)) == 2 * 1_763_786_752


def test_exact_correlation_replaces_traced_ops():
  cfg = common.model_config("fstfl", num_classes=5, num_frames=4)
  cfg.width, cfg.stage_sizes = 8, (1, 1, 1, 1)
  cfg.stc.stages, cfg.stc.impl = ("res3",), "allpairs"
  info = model_info.model_info(cfg, size=32)
  # res3 of the tiny net: 32/8 = 4x4 positions, 4 * 8 * 2 = 64 channels; D = 6, l = 0..3.
  expected = (4 + 3 + 2 + 1) * 16 * 13 * 13 * 64
  assert info["correlation"]["stc_res3"]["exact_gmacs"] * 1e9 == pytest.approx(expected, abs=0.5)
  # The all-pairs matmuls really were traced and set aside: 10 pairs x 16 x 16 positions x 64.
  assert info["correlation"]["stc_res3"]["traced_gmacs"] * 1e9 == pytest.approx(
    10 * 16 * 16 * 64, abs=0.5)
  assert info["modules"]["stc_res3"]["macs"] > expected
  assert sum(m["macs"] for m in info["modules"].values()) == info["macs"]
  assert "other" not in info["modules"]


# --- The full-size models against the reference counts. ---

@functools.cache
def _info(name: str, frames: int = 8, stages: tuple[str, ...] = ("res3",)) -> dict:
  cfg = common.model_config(name, num_classes=174, num_frames=frames)
  cfg.stc.stages = stages
  return model_info.model_info(cfg, size=224)


@pytest.mark.parametrize("name, params, gmacs", [
  ("tsn", 23_864_558, 32.70),
  ("gsf", 23_974_702, 33.00),
  ("fstfl", 23_992_862, 33.00 + 1.905),
])
def test_reference_totals(name, params, gmacs):
  info = _info(name)
  assert info["params"] == params
  assert info["gflops"] == pytest.approx(gmacs, abs=0.01)
  assert sum(m["params"] for m in info["modules"].values()) == params


def test_reference_breakdown():
  modules = _info("gsf")["modules"]
  rows = ("conv1", "layer1", "layer2", "layer3", "layer4")
  backbone = sum(modules[row]["params"] for row in rows)
  assert backbone == 23_508_032
  assert modules["fc"]["params"] == 356_526
  gsf_params = [modules[f"layer{i}/gsf"]["params"] for i in range(1, 5)]
  assert gsf_params == [5_688, 15_008, 44_784, 44_664]
  gsf_gmacs = [modules[f"layer{i}/gsf"]["gmacs"] for i in range(1, 5)]
  assert gsf_gmacs == pytest.approx([0.130, 0.087, 0.065, 0.017], abs=1e-3)


def test_sixteen_frames_doubles_macs_not_params():
  info = _info("gsf", frames=16)
  assert info["params"] == 23_974_702
  assert info["gflops"] == pytest.approx(66.00, abs=0.01)


def test_stc_per_placement_costs():
  """docs/stc.md#cost-budget (Table 6 placements): every STC has its own params and cost."""
  modules = _info("fstfl", stages=("res2", "res3", "res4", "res5"))["modules"]
  assert [modules[f"stc_res{k}"]["params"] for k in (2, 3, 4, 5)] == [13_552, 18_160, 27_376,
                                                                      45_808]
  assert [modules[f"stc_res{k}"]["gmacs"] for k in (2, 3, 4, 5)] == pytest.approx(
    [3.99, 1.91, 0.93, 0.46], abs=0.01)
  assert modules["stc_res3"]["macs"] == _info("fstfl")["modules"]["stc_res3"]["macs"]


# --- The command line. ---

def test_cli_json():
  out = subprocess.run(
    [sys.executable, "-m", "fstfl_jax.tools.model_info",
     "--config=configs/sthv1.py:model=gsf,frames=8", "--json"],
    cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
  info = json.loads(out.stdout)
  assert info["params"] == 23_974_702
  assert info["gflops"] == pytest.approx(33.00, abs=0.01)
  assert set(info["modules"]) == {"conv1", "fc"} | {
    f"layer{i}{part}" for i in range(1, 5) for part in ("", "/gsf")}
  assert all(set(m) == {"params", "macs", "gmacs"} for m in info["modules"].values())

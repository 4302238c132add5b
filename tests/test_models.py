"""Model-level checks: exact parameter counts, Table 6 placements, STC knobs, bf16, jit, errors."""

import copy
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs import demo
from configs import sthv1
from fstfl_jax.models import build_model
from fstfl_jax.models import layers
from fstfl_jax.models import stc_settings
from fstfl_jax.models import video_net
from fstfl_jax.models.stc import STC

# Measured on the official GSF code (docs/gsf.md#cost) and derived in docs/stc.md#cost-budget.
REFERENCE_PARAMS = {"tsn": 23_864_558, "gsf": 23_974_702, "fstfl": 23_992_862}
STC_PARAMS = {"res2": 13_552, "res3": 18_160, "res4": 27_376, "res5": 45_808}


def _param_tree(cfg, size=224):
  model = build_model(cfg)
  video = jnp.zeros((1, cfg.num_frames, size, size, 3))
  return jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0)}, video, train=False))["params"]


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name):
  cfg = sthv1.get_config(f"model={name},frames=8").model
  assert _count(_param_tree(cfg)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("spec", ["res2", "res3", "res4", "res5", "res2-3", "res2-4", "res2-5"])
def test_table6_placements(spec):
  cfg = sthv1.get_config(f"model=fstfl,stc={spec}").model
  params = _param_tree(cfg)
  stages = common.parse_stages(spec)
  assert sorted(k for k in params if k.startswith("stc_")) == sorted(f"stc_{s}" for s in stages)
  for s in stages:
    assert _count(params[f"stc_{s}"]) == STC_PARAMS[s]
  assert _count(params) == REFERENCE_PARAMS["gsf"] + sum(STC_PARAMS[s] for s in stages)


@pytest.mark.parametrize("overrides,expected", [
  # D = ceil(28/2) = 14: two first MLP layers of 841 inputs (docs/stc.md#cost-budget).
  (dict(half_extent=True), 39_664),
  # res2 similarities through the same MLPs: C_F 32 -> 64 widens DW7 (+32*49 +64 BN) and PW1 (+512).
  (dict(source="both"), 18_160 + 32 * 49 + 64 + 32 * 16),
  (dict(source="res2_pooled"), 18_160),
  # One validity flag per offset: +4 channels into DW7 (+4*49 +8 BN) and PW1 (+4*16).
  (dict(mask_channel=True), 18_160 + 4 * 49 + 8 + 4 * 16),
  # Three temporal MLPs instead of one shared: +2 * (169*16 + 16*8).
  (dict(share_temporal_mlp=False), 18_160 + 2 * 2_832),
  # 1x1 reduction to 64 channels (+BN) before the correlation.
  (dict(reduce_channels=64), 18_160 + 512 * 64 + 128),
  (dict(offsets=(-2, -1, 0, 1, 2)), 18_160 + 8 * 49 + 16 + 8 * 16),
])
def test_stc_knobs_parameter_counts(overrides, expected):
  cfg = sthv1.get_config("model=fstfl").model
  cfg.stc.update(overrides)
  assert _count(_param_tree(cfg)["stc_res3"]) == expected


def _tiny_cfg(name="fstfl", frames=4, **stc):
  cfg = common.model_config(name, 5, frames)
  cfg.width, cfg.stage_sizes = 8, (1, 1, 1, 1)
  cfg.stc.max_disp = 1
  cfg.stc.update(stc)
  return cfg


def intermediates(model, variables, video):
  """Sown stage outputs of a jitted eval forward."""
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])[1])
  return fn(variables, video)["intermediates"]


@pytest.fixture(scope="module")
def tiny():
  cfg = _tiny_cfg()
  model = build_model(cfg)
  video = jax.random.uniform(jax.random.key(0), (2, 4, 32, 32, 3), maxval=255.0)
  variables = jax.jit(lambda v: model.init({"params": jax.random.key(1)}, v, train=False))(video)
  return cfg, model, variables, video


def test_train_step_outputs_finite_and_batch_stats_move(tiny):
  cfg, model, variables, video = tiny
  logits, updates = jax.jit(lambda v, x: model.apply(
    v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}))(
      variables, video)
  assert logits.shape == (2, 5) and np.isfinite(np.asarray(logits)).all()
  old, new = variables["batch_stats"]["bn1"]["mean"], updates["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(old, new)


def test_stc_output_of_one_clip_ignores_other_clips(tiny):
  cfg, model, variables, video = tiny

  def res3_stc(v):
    return np.asarray(intermediates(model, variables, v)["res3_stc"][0])

  a = res3_stc(video)
  b = res3_stc(video.at[1].add(3.0))  # Frames of clip 1 only.
  t = cfg.num_frames
  np.testing.assert_array_equal(a[:t], b[:t])
  assert not np.allclose(a[t:], b[t:])


def test_bf16_forward_is_finite_and_close_to_fp32(tiny):
  cfg, model, variables, video = tiny
  cfg16 = copy.deepcopy(cfg)
  cfg16.dtype = "bfloat16"

  def features(c):
    return np.asarray(intermediates(build_model(c), variables, video)["res5"][0], np.float32)

  f32, f16 = features(cfg), features(cfg16)
  assert np.isfinite(f16).all()
  assert np.abs(f16 - f32).max() <= 0.05 * np.abs(f32).max()
  assert np.abs(f16 - f32).max() > 0  # bf16 really was used.


def test_jit_compiles_once_per_shape(tiny):
  _, model, variables, video = tiny
  traces = []

  @jax.jit
  def forward(v, x):
    traces.append(x.shape)
    return model.apply(v, x, train=False)

  forward(variables, video)
  forward(variables, video + 1.0)
  assert len(traces) == 1
  forward(variables, video[:1])
  assert len(traces) == 2


def test_model_normalises_pixels_with_imagenet_statistics():
  video = np.array(list(itertools.product([0, 128, 255], repeat=3)), np.uint8).reshape(3, 9, 3)
  want = ((video / 255.0 - np.array(video_net.IMAGENET_MEAN))
          / np.array(video_net.IMAGENET_STD))
  got = np.asarray(video_net.normalize(video))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_stc_settings_name_unknown_and_missing_keys():
  cfg = _tiny_cfg()
  cfg.stc.max_disp_per_stage = {"res3": 2}
  assert stc_settings(cfg.stc).max_disp_per_stage == (("res3", 2),)
  del cfg.stc["remat"]
  cfg.stc.max_dips = 3
  with pytest.raises(ValueError, match=r"unknown keys \['max_dips'\], missing keys \['remat'\]"):
    stc_settings(cfg.stc)


def test_runlocal_is_applied_after_the_dataset_values():
  config = demo.get_config("runlocal")  # demo.py sets batch 16 and logs every 10 steps.
  assert config.input.batch_size == config.input.eval_batch_size == 2
  assert (config.train.num_train_steps, config.train.log_every_steps) == (4, 1)


@pytest.mark.parametrize("bad", ["model=vit", "frame=8", "stc=res7"])
def test_bad_config_variants_raise(bad):
  with pytest.raises(ValueError, match="vit|frame|res7"):
    sthv1.get_config(bad)


def test_ghost_batchnorm_equals_per_group_batchnorm():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 3 + 1
  ghost = layers.BatchNorm(group_rows=4)
  variables = ghost.init(jax.random.key(1), x, train=False)
  y, state = ghost.apply(variables, x, train=True, mutable=["batch_stats"])
  plain = layers.BatchNorm()
  halves = [plain.apply(variables, x[i:i + 4], train=True, mutable=["batch_stats"])
            for i in (0, 4)]
  np.testing.assert_allclose(np.asarray(y), np.concatenate([np.asarray(h[0]) for h in halves]),
                             atol=1e-5)
  # Running stats: momentum 0.9 toward the mean of the group means / unbiased group variances.
  xs = np.asarray(x).reshape(2, -1, 4)
  want_var = 0.9 + 0.1 * xs.var(axis=1, ddof=1).mean(0)
  np.testing.assert_allclose(np.asarray(state["batch_stats"]["var"]), want_var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(state["batch_stats"]["mean"]),
                             0.1 * xs.mean(axis=1).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_on_channel_pieces_and_permuted_channels(train):
  """Pieces of the channel axis (bn3 under GSF) and a channel order (GSF's BN3d) give what BN
  on the whole, unpermuted tensor gives: same outputs, same running statistics."""
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 6)) * 3 + 1
  bn = layers.BatchNorm(group_rows=4)
  variables = bn.init(jax.random.key(1), x, train=False)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2, a.shape), jnp.float32),
                           variables)
  want, want_state = bn.apply(variables, x, train=train, mutable=["batch_stats"])
  pieces, state = bn.apply(variables, (x[..., :2], x[..., 2:]), train=train,
                           mutable=["batch_stats"])
  np.testing.assert_allclose(np.concatenate(pieces, -1), np.asarray(want), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(state, want_state, rtol=1e-6)
  order = np.array([3, 0, 5, 1, 4, 2])
  permuted, state = bn.apply(variables, x[..., order], train=train, channel_order=order,
                             mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(permuted), np.asarray(want)[..., order], rtol=1e-5,
                             atol=1e-5)
  chex.assert_trees_all_close(state, want_state, rtol=1e-6)


@pytest.mark.parametrize("stc", [
  dict(source="both"),
  dict(temporal_boundary="circular", mask_channel=True, reduce_channels=4),
  dict(offsets=(-1, 0, 2), share_temporal_mlp=False, temporal_boundary="clamp"),
])
def test_stc_variants_run(stc):
  """Every non-default STC mode builds, runs (train mode) and changes its input finitely."""
  cfg = _tiny_cfg(**stc)
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2 * 4, 4, 4, 16)))
  prev = jax.nn.relu(jax.random.normal(jax.random.key(1), (2 * 4, 8, 8, 8)))
  module = STC("res3", stc_settings(cfg.stc), num_frames=4)

  @jax.jit
  def run(x, prev):
    variables = module.init({"params": jax.random.key(1)}, x, False, prev=prev)
    return module.apply(variables, x, True, prev=prev, mutable=["batch_stats"])[0]

  y = np.asarray(run(x, prev))
  assert np.isfinite(y).all() and not np.allclose(y, np.asarray(x))


def test_zero_gamma_trap_is_refused():
  cfg = _tiny_cfg(zero_init_last_bn=True)
  with pytest.raises(ValueError, match="final_relu"):
    jax.eval_shape(lambda: build_model(cfg).init(
      {"params": jax.random.key(0)}, jnp.zeros((1, 4, 32, 32, 3))))

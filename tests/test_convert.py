"""ImageNet weight import: torchvision-layout ResNet-50 (plain torch) -> our linen model.

The reference is `tests/torch_resnet.py` with random weights and random BN running statistics,
so a wrong transpose, a swapped mean/var or a misplaced padding changes the features.
"""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import serialization
from flax import traverse_util
from safetensors.numpy import save_file

from configs.common import model_config
from fstfl_jax.models import build_model
from fstfl_jax.models import convert
from fstfl_jax.models import video_net
from fstfl_jax.tools import convert_weights
import torch_resnet

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_NUM_CLASSES = 5
_TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def _randomise(net: torch_resnet.ResNet, seed: int) -> None:
  """Random BN affine params, then running stats from one batch, then randomly perturbed.

  Calibrating on data keeps activations O(1) through 16 blocks; the perturbation makes sure
  mean and var are not data-exact, so mixing them up cannot go unnoticed.
  """
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
      bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))
      bn.momentum = 1.0  # Running stats := this batch's (unbiased var, as torch stores it).
    net.train()
    net(torch.randn(4, 3, 64, 64, generator=gen))
    for bn in bns:
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
      bn.running_var.mul_(0.7 + 0.6 * torch.rand(std.shape, generator=gen))
      bn.momentum = 0.1
  net.eval()


def _numpy_state(net: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Full-width torch ResNet-50, its outputs on 2 random 112x112 images, and the CLI's output.

  `pixels` are uint8 [B, H, W, 3] (what our model takes and normalises itself); torch sees them
  normalised with the ImageNet statistics in float32, as torchvision's transforms do.
  """
  torch.manual_seed(0)
  net = torch_resnet.ResNet(num_classes=_NUM_CLASSES)
  _randomise(net, seed=1)
  pixels = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
  mean = np.asarray(video_net.IMAGENET_MEAN, np.float32)
  std = np.asarray(video_net.IMAGENET_STD, np.float32)
  images = torch.from_numpy(np.ascontiguousarray(
    ((pixels / np.float32(255) - mean) / std).transpose(0, 3, 1, 2)))
  with torch.no_grad():
    res5 = net.features(images.float())
    logits = net.fc(res5.mean(dim=(2, 3)))
  out = tmp_path_factory.mktemp("weights")
  torch.save(net.state_dict(), out / "r50.pth")
  # The real entry point, including its check against the model's abstract variables.
  subprocess.run([sys.executable, "-m", "fstfl_jax.tools.convert_weights",
                  f"--input={out / 'r50.pth'}", f"--output={out / 'r50.msgpack'}",
                  "--check_model_config=tsn"], check=True, cwd=_ROOT)
  return dict(state=_numpy_state(net), pixels=pixels, res5=res5.numpy(),
              logits=logits.numpy(), converted=out / "r50.msgpack")


def _tiny_state(seed: int, **layout) -> dict[str, np.ndarray]:
  torch.manual_seed(seed)
  net = torch_resnet.ResNet(**{**_TINY, **layout})
  _randomise(net, seed)
  return _numpy_state(net)


def _abstract_init(name: str, num_frames: int = 1, size: int = 32, **layout):
  """The model and the shapes of its variables (tracing only: nothing is compiled)."""
  cfg = model_config(name, num_classes=_NUM_CLASSES, num_frames=num_frames)
  for key, value in layout.items():
    setattr(cfg, key, value)
  model = build_model(cfg)
  video = jax.ShapeDtypeStruct((1, num_frames, size, size, 3), jnp.float32)
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return model, jax.eval_shape(lambda v: model.init(keys, v, train=False), video)


def test_cli_output_holds_the_mapped_tensors(reference):
  converted = traverse_util.flatten_dict(convert.load_converted(reference["converted"]))
  assert len(converted) == 265  # 53 convs + 53 BNs x (scale, bias, mean, var); no fc.
  state = reference["state"]
  np.testing.assert_array_equal(converted[("params", "layer2_0", "downsample_conv", "kernel")],
                                state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(converted[("params", "layer4_2", "bn3", "scale")],
                                state["layer4.2.bn3.weight"])
  np.testing.assert_array_equal(converted[("batch_stats", "layer3_4", "bn2", "var")],
                                state["layer3.4.bn2.running_var"])


def test_all_input_formats_convert_identically(tmp_path):
  state = _tiny_state(8)
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  torch.save(tensors, tmp_path / "w.pth")
  # resnet50-19c8e357.pth predates the zip format; weights_only loading must still read it.
  torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  save_file(state, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **state)
  layout = ["--width", "8", "--stage_sizes", "1,1,1,1"]
  want = traverse_util.flatten_dict(convert.convert_state_dict(state, **_TINY))
  for name in ("w.pth", "legacy.pth", "w.safetensors", "w.npz"):
    convert_weights.main([f"--input={tmp_path / name}", f"--output={tmp_path / 'out.msgpack'}"]
                         + layout)
    got = traverse_util.flatten_dict(convert.load_converted(tmp_path / "out.msgpack"))
    assert got.keys() == want.keys(), name
    for key, value in want.items():
      np.testing.assert_array_equal(got[key], value, err_msg=f"{name}: {key}")


def test_converted_resnet50_matches_torch(reference):
  converted = convert.load_converted(reference["converted"])
  model, variables = _abstract_init("tsn")
  merged, report = convert.merge_pretrained(variables, converted)
  assert report.kept_fresh == ("params/fc/bias", "params/fc/kernel")
  assert len(report.copied) == 265
  # Our fc is new by design (and only abstract here); give it torch's head to compare logits.
  merged["params"]["fc"] = {"kernel": jnp.asarray(reference["state"]["fc.weight"].T),
                            "bias": jnp.asarray(reference["state"]["fc.bias"])}
  video = jnp.asarray(reference["pixels"][:, None])  # uint8 [B, T=1, H, W, 3]
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
  logits, state = apply(merged, video)
  (res5,) = state["intermediates"]["res5"]
  want_res5 = reference["res5"].transpose(0, 2, 3, 1)  # [B, 4, 4, 2048]
  assert res5.shape == want_res5.shape
  res5_err = float(np.abs(np.asarray(res5) - want_res5).max())
  logit_err = float(np.abs(np.asarray(logits) - reference["logits"]).max())
  print(f"res5 max|err| {res5_err:.3g} (max|ref| {np.abs(want_res5).max():.3g}); "
        f"logits max|err| {logit_err:.3g} (max|ref| {np.abs(reference['logits']).max():.3g})")
  assert res5_err < 1e-4 * np.abs(want_res5).max()
  assert logit_err < 1e-4 * np.abs(reference["logits"]).max()


@pytest.mark.parametrize("name", ["gsf", "fstfl"])
def test_merge_keeps_gsf_stc_and_head_fresh(name):
  converted = convert.convert_state_dict(_tiny_state(3), **_TINY)
  _, shapes = _abstract_init(name, num_frames=4, size=64, **_TINY)
  # Stand-in for a fresh init: merging only moves arrays, so their values need no meaning.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  merged, report = convert.merge_pretrained(variables, converted)
  before = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()}
  after = {"/".join(k): v for k, v in traverse_util.flatten_dict(merged).items()}
  source = {"/".join(k): v for k, v in traverse_util.flatten_dict(converted).items()}
  assert set(report.copied) == set(source)
  assert set(report.copied) | set(report.kept_fresh) == set(before)
  assert any("/gsf/" in k for k in report.kept_fresh)
  assert any(k.startswith("params/fc/") for k in report.kept_fresh)
  assert any(k.startswith("params/stc_") for k in report.kept_fresh) == (name == "fstfl")
  for key in report.kept_fresh:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  for key in report.copied:
    np.testing.assert_array_equal(after[key], source[key], err_msg=key)
    assert not np.array_equal(after[key], before[key]), key


def _resnet18_state() -> dict[str, np.ndarray]:
  """The keys and shapes of torchvision's resnet18 (BasicBlock: two 3x3 convs, no conv3)."""
  state = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}

  def bn(prefix, c):
    for name in ("weight", "bias", "running_mean", "running_var"):
      state[f"{prefix}.{name}"] = np.ones((c,), np.float32)

  bn("bn1", 64)
  in_ch = 64
  for i, planes in enumerate((64, 128, 256, 512)):
    for j in range(2):
      p = f"layer{i + 1}.{j}"
      state[f"{p}.conv1.weight"] = np.zeros((planes, in_ch, 3, 3), np.float32)
      bn(f"{p}.bn1", planes)
      state[f"{p}.conv2.weight"] = np.zeros((planes, planes, 3, 3), np.float32)
      bn(f"{p}.bn2", planes)
      if i > 0 and j == 0:
        state[f"{p}.downsample.0.weight"] = np.zeros((planes, in_ch, 1, 1), np.float32)
        bn(f"{p}.downsample.1", planes)
      in_ch = planes
  state["fc.weight"] = np.zeros((1000, 512), np.float32)
  return state


def test_resnet18_file_is_rejected_naming_keys_and_shapes():
  with pytest.raises(convert.ConversionError) as err:
    convert.convert_state_dict(_resnet18_state(), source="resnet18.pth")
  msg = str(err.value)
  assert "resnet18.pth" in msg
  assert "'layer1.0.conv1.weight' has shape (64, 64, 3, 3), expected (64, 64, 1, 1)" in msg
  assert "missing 'layer1.0.conv3.weight' (expected shape (256, 64, 1, 1))" in msg


def test_wrong_width_missing_and_extra_keys():
  state = _tiny_state(4, width=16)
  with pytest.raises(convert.ConversionError, match=r"'conv1.weight' has shape \(16, 3, 7, 7\), "
                     r"expected \(8, 3, 7, 7\)"):
    convert.convert_state_dict(state, **_TINY)

  state = _tiny_state(5)
  del state["layer2.0.bn2.running_var"]
  with pytest.raises(convert.ConversionError, match=r"(?s)1 problem.*"
                     r"missing 'layer2.0.bn2.running_var' \(expected shape \(16,\)"):
    convert.convert_state_dict(state, **_TINY)

  state = _tiny_state(6)  # Has fc.* and num_batches_tracked, which are dropped silently.
  state["layer4.1.conv1.weight"] = np.zeros((64, 256, 1, 1), np.float32)
  with pytest.raises(convert.ConversionError, match=r"unexpected key 'layer4.1.conv1.weight'"):
    convert.convert_state_dict(state, **_TINY)
  converted = convert.convert_state_dict(state, allow_extra_keys=True, **_TINY)
  assert "layer4_1" not in converted["params"] and "fc" not in converted["params"]


def test_merge_rejects_a_different_layout():
  converted = convert.convert_state_dict(_tiny_state(7), **_TINY)
  _, wider = _abstract_init("tsn", **{**_TINY, "width": 16})
  with pytest.raises(convert.ConversionError,
                     match=r"'params/conv1/kernel': model shape \(7, 7, 3, 16\), "
                           r"converted shape \(7, 7, 3, 8\)"):
    convert.merge_pretrained(wider, converted)
  _, deeper = _abstract_init("tsn", **{**_TINY, "stage_sizes": (1, 2, 1, 1)})
  with pytest.raises(convert.ConversionError, match=r"(?s)15 problem.*model backbone variable "
                     r"'batch_stats/layer2_1/bn1/mean' \(16,\) is missing"):
    convert.merge_pretrained(deeper, converted)


def test_bad_files(tmp_path, monkeypatch):
  (tmp_path / "w.bin").write_bytes(b"")
  with pytest.raises(convert.ConversionError, match=r"w.bin: unsupported file type '.bin'"):
    convert.load_state_dict(tmp_path / "w.bin")
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # As if torch were not installed.
  with pytest.raises(ImportError, match=r"w.pth needs PyTorch.*\.safetensors or \.npz"):
    convert.load_state_dict(tmp_path / "w.pth")
  convert.save_converted({"params": {"a": np.zeros(2)}, "batch_stats": {}}, tmp_path / "ok.msgpack")
  assert convert.load_converted(tmp_path / "ok.msgpack")["params"]["a"].shape == (2,)
  (tmp_path / "bad.msgpack").write_bytes(serialization.msgpack_serialize({"params": {}}))
  with pytest.raises(convert.ConversionError, match=r"bad.msgpack: expected a msgpack dict"):
    convert.load_converted(tmp_path / "bad.msgpack")

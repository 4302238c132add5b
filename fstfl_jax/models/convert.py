"""ImageNet ResNet-50 weights in torchvision's layout -> this package's linen variables.

The source is torchvision's `resnet50-19c8e357.pth` (GSF loads exactly this file,
docs/gsf.md#backbone-and-head), or the same tensors stored as `.safetensors` or `.npz` under the
same keys. Only the backbone is converted: the 1000-way `fc` is dropped and `num_batches_tracked`
is ignored, so the new head, GSF and STC keep their fresh initialisation (`merge_pretrained`).

Mapping (torch key -> flax collection/path, transform). `{p}` is a block prefix: torch
`layer{i}.{j}.` becomes flax `layer{i}_{j}/`; the stem has no prefix.

| torch key                            | flax collection/path                  | transform    |
|--------------------------------------|---------------------------------------|--------------|
| `conv1.weight`                       | `params/conv1/kernel`                 | OIHW -> HWIO |
| `bn1.weight`, `bn1.bias`             | `params/bn1/scale`, `params/bn1/bias` |              |
| `bn1.running_mean`, `.running_var`   | `batch_stats/bn1/mean`, `.../var`     |              |
| `{p}conv{k}.weight` (k = 1, 2, 3)    | `params/{p}conv{k}/kernel`            | OIHW -> HWIO |
| `{p}bn{k}.weight`, `.bias`           | `params/{p}bn{k}/scale`, `bias`       |              |
| `{p}bn{k}.running_mean`, `_var`      | `batch_stats/{p}bn{k}/mean`, `var`    |              |
| `{p}downsample.0.weight`             | `params/{p}downsample_conv/kernel`    | OIHW -> HWIO |
| `{p}downsample.1.weight`, `.bias`    | `params/{p}downsample_bn/scale`, `bias` |            |
| `{p}downsample.1.running_mean`, `_var` | `batch_stats/{p}downsample_bn/mean`, `var` |       |
| `fc.weight`, `fc.bias`               | dropped                               |              |
| `*.num_batches_tracked`              | ignored                               |              |

The running variance is copied as is: PyTorch stores the unbiased estimate and normalises with
it in eval mode, exactly as flax uses `var`, so eval outputs match. Every tensor becomes float32.
Any other key (e.g. `layer3.6.*` from a ResNet-101) is an error unless `allow_extra_keys`.
"""

import dataclasses
import io
import logging
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import core
from flax import serialization
from flax import traverse_util

from data_pipelines import storage

_EXPANSION = 4
_MAX_LISTED = 12  # Problems listed in one error message; the rest are counted.
_SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")

# Torch keys dropped on purpose (see the table above).
_IGNORED = re.compile(r"^fc\.(weight|bias)$|\.num_batches_tracked$")
# Flax paths that must come from the ImageNet file whenever a model has them.
_BACKBONE_PATH = re.compile(
  r"^(conv1|bn1)/|^layer\d+_\d+/(conv[123]|bn[123]|downsample_conv|downsample_bn)/")

_BN_TENSORS = (
  ("weight", "params", "scale"),
  ("bias", "params", "bias"),
  ("running_mean", "batch_stats", "mean"),
  ("running_var", "batch_stats", "var"),
)

Variables = dict[str, Any]


class ConversionError(ValueError):
  """The weights do not fit the expected ResNet layout; the message names every bad key."""


@dataclasses.dataclass(frozen=True)
class _Target:
  """Where one torch tensor goes: flax collection and path, expected torch shape, transform."""
  collection: str
  path: tuple[str, ...]
  torch_shape: tuple[int, ...]
  is_conv: bool


@dataclasses.dataclass(frozen=True)
class MergeReport:
  """Flax keys ('collection/module/.../name') copied from the file or left as initialised."""
  copied: tuple[str, ...]
  kept_fresh: tuple[str, ...]


def _modules(stage_sizes: Sequence[int], width: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
  """Yields (torch prefix, flax module path, conv OIHW shape or (channels,) for BN) in order."""
  yield "conv1.", "conv1", (width, 3, 7, 7)
  yield "bn1.", "bn1", (width,)
  in_channels = width
  for i, num_blocks in enumerate(stage_sizes):
    planes = width * 2**i
    out_channels = planes * _EXPANSION
    for j in range(num_blocks):
      torch_prefix, flax_prefix = f"layer{i + 1}.{j}.", f"layer{i + 1}_{j}/"
      yield torch_prefix + "conv1.", flax_prefix + "conv1", (planes, in_channels, 1, 1)
      yield torch_prefix + "bn1.", flax_prefix + "bn1", (planes,)
      yield torch_prefix + "conv2.", flax_prefix + "conv2", (planes, planes, 3, 3)
      yield torch_prefix + "bn2.", flax_prefix + "bn2", (planes,)
      yield torch_prefix + "conv3.", flax_prefix + "conv3", (out_channels, planes, 1, 1)
      yield torch_prefix + "bn3.", flax_prefix + "bn3", (out_channels,)
      # torchvision adds the projection exactly when the shape changes (first block of a stage).
      if j == 0:
        yield (torch_prefix + "downsample.0.", flax_prefix + "downsample_conv",
               (out_channels, in_channels, 1, 1))
        yield torch_prefix + "downsample.1.", flax_prefix + "downsample_bn", (out_channels,)
      in_channels = out_channels


def key_mapping(stage_sizes: Sequence[int] = (3, 4, 6, 3),
                width: int = 64) -> dict[str, _Target]:
  """Every torch key the backbone needs -> its flax target (the module docstring's table)."""
  mapping = {}
  for torch_prefix, flax_module, shape in _modules(stage_sizes, width):
    module_path = tuple(flax_module.split("/"))
    if len(shape) == 4:
      mapping[torch_prefix + "weight"] = _Target("params", module_path + ("kernel",), shape, True)
    else:
      for torch_name, collection, flax_name in _BN_TENSORS:
        mapping[torch_prefix + torch_name] = _Target(
          collection, module_path + (flax_name,), shape, False)
  return mapping


def _raise_problems(what: str, problems: list[str]) -> None:
  if problems:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise ConversionError(f"{what}: {len(problems)} problem(s):\n  {listed}{tail}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *,
                       stage_sizes: Sequence[int] = (3, 4, 6, 3), width: int = 64,
                       allow_extra_keys: bool = False, source: str = "state dict") -> Variables:
  """torchvision-keyed arrays -> {'params': ..., 'batch_stats': ...} of the backbone (float32).

  Raises ConversionError naming each missing key, each key whose shape differs (expected vs
  actual torch shape) and, unless `allow_extra_keys`, each unknown key.
  """
  mapping = key_mapping(stage_sizes, width)
  problems = []
  for key, target in mapping.items():
    if key not in state_dict:
      problems.append(f"missing {key!r} (expected shape {target.torch_shape})")
    elif tuple(np.shape(state_dict[key])) != target.torch_shape:
      problems.append(f"{key!r} has shape {tuple(np.shape(state_dict[key]))}, "
                      f"expected {target.torch_shape}")
  extra = sorted(k for k in state_dict if k not in mapping and not _IGNORED.search(k))
  if extra and allow_extra_keys:
    logging.warning("%s: ignoring %d unknown key(s): %s", source, len(extra), extra)
  elif extra:
    problems.extend(f"unexpected key {k!r} (shape {tuple(np.shape(state_dict[k]))})"
                    for k in extra)
  layout = f"ResNet stage_sizes={tuple(stage_sizes)} width={width}"
  _raise_problems(f"{source} does not match a torchvision-layout {layout}", problems)

  flat = {}
  for key, target in mapping.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    if target.is_conv:
      value = value.transpose(2, 3, 1, 0)
    flat[(target.collection,) + target.path] = value
  return traverse_util.unflatten_dict(flat)


def _torch_to_numpy(path: str, data: io.BytesIO) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f"Reading {path} needs PyTorch (`pip install torch`, CPU build is enough). Alternatively "
      "pass the same tensors as .safetensors or .npz (same keys).") from e
  obj = torch.load(data, map_location="cpu", weights_only=True)
  # Training checkpoints wrap the tensors; the torchvision file is the bare state dict.
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}.")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
    # numpy has no bfloat16; every float tensor ends up float32 anyway.
    out[key] = (value.float() if value.is_floating_point() else value).numpy()
  return out


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a torchvision-keyed state dict from .pth/.pt (needs torch), .safetensors or .npz.

  `path` may be local or `gs://`.
  """
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _SUFFIXES:
    raise ConversionError(
      f"{path}: unsupported file type {suffix!r}; expected one of {_SUFFIXES}.")
  if not storage.path(path).exists():
    raise FileNotFoundError(f"Weights file {path} does not exist.")
  data = io.BytesIO(storage.path(path).read_bytes())
  if suffix in (".pth", ".pt"):
    return _torch_to_numpy(path, data)
  if suffix == ".safetensors":
    from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
    return load(data.getvalue())
  with np.load(data, allow_pickle=False) as arrays:
    return {k: arrays[k] for k in arrays.files}


def convert_file(path: str | os.PathLike[str], **kwargs: Any) -> Variables:
  """`load_state_dict` + `convert_state_dict`; kwargs as for the latter."""
  return convert_state_dict(load_state_dict(path), source=str(path), **kwargs)


def save_converted(variables: Variables, path: str | os.PathLike[str]) -> None:
  """Writes {'params', 'batch_stats'} as flax msgpack (local or gs://), never a partial file."""
  storage.write_bytes(path, serialization.msgpack_serialize(
    {"params": variables["params"], "batch_stats": variables["batch_stats"]}))


def load_converted(path: str | os.PathLike[str]) -> Variables:
  """Reads a file written by `save_converted` -> {'params': ..., 'batch_stats': ...} of numpy."""
  restored = serialization.msgpack_restore(storage.path(path).read_bytes())
  if not isinstance(restored, dict) or set(restored) != {"params", "batch_stats"}:
    found = sorted(restored) if isinstance(restored, dict) else type(restored).__name__
    raise ConversionError(
      f"{path}: expected a msgpack dict with keys ['batch_stats', 'params'], found {found}.")
  return restored


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def check_compatible(variables: Mapping[str, Any], converted: Mapping[str, Any]) -> MergeReport:
  """Checks that `converted` fits `variables` (arrays or ShapeDtypeStructs); says what goes where.

  Every converted tensor needs a model variable of the same shape, and every backbone variable
  of the model (conv/bn of stem and blocks) needs a converted tensor; GSF, STC and head do not.
  """
  model = _flat(core.unfreeze(variables))
  pretrained = _flat(converted)
  problems = []
  for key, value in pretrained.items():
    if key not in model:
      problems.append(f"converted {key!r} has no counterpart in the model")
    elif tuple(model[key].shape) != tuple(np.shape(value)):
      problems.append(f"{key!r}: model shape {tuple(model[key].shape)}, "
                      f"converted shape {tuple(np.shape(value))}")
  fresh = [k for k in model if k not in pretrained]
  problems.extend(f"model backbone variable {k!r} {tuple(model[k].shape)} is missing from the "
                  "converted weights" for k in fresh if _BACKBONE_PATH.search(k.partition("/")[2]))
  _raise_problems("Converted weights do not fit the model", problems)
  return MergeReport(copied=tuple(k for k in model if k in pretrained), kept_fresh=tuple(fresh))


def merge_pretrained(variables: Mapping[str, Any],
                     converted: Mapping[str, Any]) -> tuple[Variables, MergeReport]:
  """Freshly initialised model variables with the backbone replaced by the converted tensors.

  Copied tensors take the dtype of the model variable they replace. GSF, STC and the new fc
  keep their initial values (listed in the report's `kept_fresh`).
  """
  report = check_compatible(variables, converted)
  pretrained = _flat(converted)
  merged = {}
  for path, value in traverse_util.flatten_dict(core.unfreeze(variables)).items():
    key = "/".join(path)
    merged[path] = jnp.asarray(pretrained[key], value.dtype) if key in pretrained else value
  return traverse_util.unflatten_dict(merged), report

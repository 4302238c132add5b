r"""Parameter and MAC table of a model config, per top-level module, for one clip.

  fstfl-model-info --config configs/sthv1.py:model=fstfl,frames=8
  fstfl-model-info --config configs/sthv1.py:model=gsf,frames=16 --json
  (the same as `python -m fstfl_jax.tools.model_info ...`)

MACs follow the paper's GFLOPs convention (multiply-adds of convs and matmuls,
`fstfl_jax.models.flops`);
the STC correlation is counted exactly (valid frame pairs x H x W x (2D+1)^2 x C), not as the
all-pairs matmuls that compute it. Nothing is allocated: shapes come from `jax.eval_shape` and
the count from the forward's jaxpr (eval mode, input [1, T, size, size, 3]).
"""

import collections
import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags

from data_pipelines import cli
from fstfl_jax.models import build_model
from fstfl_jax.models import flops

PROG = "fstfl-model-info"
_STEM = ("conv1", "bn1")


def module_group(path: tuple[str, ...], top_level: frozenset[str]) -> str:
  """Table row of a parameter path or op scope: the first component that is a top-level module.

  The stem (conv1 + bn1) is "conv1"; bottleneck `layerN_j` folds into "layerN", its GSF into
  "layerN/gsf"; "stc_resK" and "fc" stay; anything outside every module is "other".
  """
  for i, part in enumerate(path):
    name = part.split(".")[0]  # Flax scopes non-__call__ methods as "module.method".
    if name not in top_level:
      continue
    if name in _STEM:
      return "conv1"
    if name.startswith("layer"):
      stage = name.split("_")[0]
      return f"{stage}/gsf" if "gsf" in (p.split(".")[0] for p in path[i + 1:]) else stage
    return name
  return "other"


def model_info(model_cfg: Any, size: int = 224) -> dict[str, Any]:
  """Params and MACs of `build_model(model_cfg)` on one clip `[1, T, size, size, 3]`.

  Returns:
    {"model", "num_classes", "num_frames", "size", "params", "macs", "gflops" (= GMACs, the
    paper's convention), "modules": {row: {"params", "macs", "gmacs"}} in forward order,
    "correlation": {row: {"exact_gmacs", "traced_gmacs"}} for every STC}.
  """
  model = build_model(model_cfg)
  video = jax.ShapeDtypeStruct((1, model_cfg.num_frames, size, size, 3), jnp.uint8)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(functools.partial(model.init, train=False), rngs, video)
  with flops.exact_correlation() as correlations:
    costs = flops.count_ops(functools.partial(model.apply, train=False), variables, video)

  params = variables["params"]
  top_level = frozenset(params)
  group = functools.partial(module_group, top_level=top_level)
  stc_rows = sorted(name for name in top_level if name.startswith("stc_"))
  if stc_rows and not correlations:
    raise RuntimeError(
      f"{model_cfg.name} has {stc_rows} but no STC correlation step (STC._features) was seen "
      "while tracing, so the correlation cannot be counted exactly.")

  if costs and all(group(c.scope) == "other" for c in costs):
    raise RuntimeError("No counted op carries a module name: module names reach the jaxpr only "
                       "while flax.config.flax_profile is True (its default).")
  is_corr = [flops.in_scope(c, (flops.CORRELATION_SCOPE,)) for c in costs]
  macs = flops.group_macs([c for c, skip in zip(costs, is_corr) if not skip], group)
  traced_corr = flops.group_macs([c for c, skip in zip(costs, is_corr) if skip], group)
  exact_corr: dict[str, int] = collections.Counter()
  for path, count in correlations:
    exact_corr[group(path)] += count
  for row, count in exact_corr.items():
    macs[row] = macs.get(row, 0) + count
  param_rows = flops.group_params(params, group)

  rows = list(dict.fromkeys([group(c.scope) for c in costs] + list(param_rows)))
  modules = {row: {"params": param_rows.get(row, 0), "macs": macs.get(row, 0),
                   "gmacs": macs.get(row, 0) / 1e9} for row in rows}
  total_macs = sum(macs.values())
  return {
    "model": model_cfg.name,
    "num_classes": model_cfg.num_classes,
    "num_frames": model_cfg.num_frames,
    "size": size,
    "params": flops.param_count(params),
    "macs": total_macs,
    "gflops": total_macs / 1e9,
    "modules": modules,
    "correlation": {row: {"exact_gmacs": exact_corr[row] / 1e9,
                          "traced_gmacs": traced_corr.get(row, 0) / 1e9}
                    for row in sorted(exact_corr)},
  }


def format_table(info: dict[str, Any]) -> str:
  """Human-readable version of `model_info`'s result."""
  lines = [f"{info['model']}: {info['num_frames']} frames at {info['size']}x{info['size']}, "
           f"{info['num_classes']} classes, one clip",
           f"{'module':<14}{'params':>14}{'GMACs':>10}"]
  for row, m in info["modules"].items():
    lines.append(f"{row:<14}{m['params']:>14,}{m['gmacs']:>10.3f}")
  lines.append(f"{'total':<14}{info['params']:>14,}{info['gflops']:>10.3f}")
  for row, c in info["correlation"].items():
    lines.append(f"{row} correlation: {c['exact_gmacs']:.3f} GMACs counted exactly "
                 f"(the traced all-pairs implementation does {c['traced_gmacs']:.3f}).")
  lines.append("GMACs = multiply-adds of convs and matmuls x 1e-9 (the paper's GFLOPs); "
               "BN, activations, pooling and norms are not counted.")
  return "\n".join(lines)


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-model-info` besides `--config`."""
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=fv)
  flags.DEFINE_integer("size", None, "Input height and width (default: input.crop_size or 224).",
                       flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__, config=True)
  config = args.config
  if "model" not in config:
    raise cli.UserError(f"the config from {args['config'].config_filename!r} has no `model` "
                        "section; expected a dataset config such as configs/sthv1.py.")
  size = args.size
  if size is None:
    size = config.input.crop_size if "input" in config else 224
  info = model_info(config.model, size)
  print(json.dumps(info, indent=2) if args.json else format_table(info))
  return 0


def run() -> None:
  """Console script `fstfl-model-info`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

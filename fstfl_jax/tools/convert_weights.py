"""Converts torchvision ImageNet ResNet-50 weights to a flax msgpack file of the backbone.

  fstfl-convert-weights --input resnet50-19c8e357.pth \
      --output weights/resnet50_imagenet.msgpack --check_model_config fstfl
  (the same as `python -m fstfl_jax.tools.convert_weights ...`)

Input: `.pth`/`.pt` (needs torch), `.safetensors` or `.npz` with torchvision's keys. Output:
`flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})`, read back with
`fstfl_jax.models.convert.load_converted` and applied with `merge_pretrained`. The key mapping
is the table in `fstfl_jax/models/convert.py`.
"""

import re
import time
from collections.abc import Sequence

from absl import flags
from absl import logging
from flax import traverse_util

from data_pipelines import cli
from fstfl_jax.models import convert

PROG = "fstfl-convert-weights"


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-convert-weights` (see the module docstring)."""
  flags.DEFINE_string("input", None, "torchvision-keyed weights (.pth, .pt, .safetensors, .npz).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "flax msgpack file to write.", flag_values=fv,
                      required=True)
  flags.DEFINE_list("stage_sizes", ["3", "4", "6", "3"], "Blocks per stage (ResNet-50: 3,4,6,3).",
                    flag_values=fv)
  flags.DEFINE_integer("width", 64, "Base width.", lower_bound=1, flag_values=fv)
  flags.DEFINE_bool("allow_extra_keys", False, "Warn about unknown keys instead of failing.",
                    flag_values=fv)
  flags.DEFINE_enum("check_model_config", None, ["tsn", "gsf", "fstfl"], "Also check the result "
                    "against this model variant (abstract init; uses --stage_sizes/--width and "
                    "the default STC config).", flag_values=fv)


def _check_model(name: str, stage_sizes: tuple[int, ...], width: int,
                 converted: convert.Variables) -> None:
  # Imported lazily: only this optional check needs the model code and configs.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from configs.common import model_config  # pylint: disable=g-import-not-at-top
  from fstfl_jax.models import build_model  # pylint: disable=g-import-not-at-top

  cfg = model_config(name, num_classes=2, num_frames=8)
  cfg.stage_sizes, cfg.width = stage_sizes, width
  model = build_model(cfg)
  video = jax.ShapeDtypeStruct((1, cfg.num_frames, 224, 224, 3), jnp.uint8)
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda v: model.init(keys, v, train=False), video)
  report = convert.check_compatible(variables, converted)
  # Summarise per module kind ('layer*/gsf' rather than 16 block names).
  fresh = set()
  for key in report.kept_fresh:
    path = key.split("/")[1:]
    fresh.add("layer*/" + path[1] if re.fullmatch(r"layer\d+_\d+", path[0]) else path[0])
  logging.info("Model %r: %d tensors from the file, %d keep their initialisation, in %s.", name,
               len(report.copied), len(report.kept_fresh), sorted(fresh))


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  stage_sizes = tuple(int(n) for n in args.stage_sizes)
  start = time.perf_counter()
  try:
    converted = convert.convert_file(args.input, stage_sizes=stage_sizes, width=args.width,
                                     allow_extra_keys=args.allow_extra_keys)
  except (convert.ConversionError, ImportError, FileNotFoundError) as e:
    raise cli.UserError(str(e)) from None
  if args.check_model_config:
    _check_model(args.check_model_config, stage_sizes, args.width, converted)
  convert.save_converted(converted, args.output)
  logging.info("Wrote %s (%d params, %d batch_stats tensors) in %.1f s.", args.output,
               len(traverse_util.flatten_dict(converted["params"])),
               len(traverse_util.flatten_dict(converted["batch_stats"])),
               time.perf_counter() - start)
  return 0


def run() -> None:
  """Console script `fstfl-convert-weights`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()

"""Converts torchvision ImageNet ResNet-50 weights to a flax msgpack file of the backbone.

  python -m fstfl_jax.tools.convert_weights resnet50-19c8e357.pth \
      weights/resnet50_imagenet.msgpack --check-model-config fstfl

Input: `.pth`/`.pt` (needs torch), `.safetensors` or `.npz` with torchvision's keys. Output:
`flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})`, read back with
`fstfl_jax.models.convert.load_converted` and applied with `merge_pretrained`. The key mapping
is the table in `fstfl_jax/models/convert.py`.
"""

import argparse
import logging
import re
import time
from typing import Sequence

from flax import traverse_util

from fstfl_jax.models import convert


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(","))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("input", help="torchvision-keyed weights (.pth, .pt, .safetensors, .npz)")
  parser.add_argument("output", help="flax msgpack file to write")
  parser.add_argument("--stage-sizes", type=_ints, default=(3, 4, 6, 3),
                      help="blocks per stage (default ResNet-50: 3,4,6,3)")
  parser.add_argument("--width", type=int, default=64, help="base width (default 64)")
  parser.add_argument("--allow-extra-keys", action="store_true",
                      help="warn about unknown keys instead of failing")
  parser.add_argument("--check-model-config", choices=("tsn", "gsf", "fstfl"),
                      help="also check the result against this model variant (abstract init; "
                           "uses --stage-sizes/--width and the default STC config)")
  return parser.parse_args(argv)


def _check_model(name: str, args: argparse.Namespace, converted: convert.Variables) -> None:
  # Imported lazily: only this optional check needs the model code and configs.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from configs.common import model_config  # pylint: disable=g-import-not-at-top
  from fstfl_jax.models import build_model  # pylint: disable=g-import-not-at-top

  cfg = model_config(name, num_classes=2, num_frames=8)
  cfg.stage_sizes, cfg.width = args.stage_sizes, args.width
  model = build_model(cfg)
  video = jax.ShapeDtypeStruct((1, cfg.num_frames, 224, 224, 3), jnp.float32)
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


def main(argv: Sequence[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  logging.getLogger("jax").setLevel(logging.WARNING)  # Backend probing noise.
  args = _parse(argv)
  start = time.perf_counter()
  converted = convert.convert_file(args.input, stage_sizes=args.stage_sizes, width=args.width,
                                   allow_extra_keys=args.allow_extra_keys)
  if args.check_model_config:
    _check_model(args.check_model_config, args, converted)
  convert.save_converted(converted, args.output)
  logging.info("Wrote %s (%d params, %d batch_stats tensors) in %.1f s.", args.output,
               len(traverse_util.flatten_dict(converted["params"])),
               len(traverse_util.flatten_dict(converted["batch_stats"])),
               time.perf_counter() - start)


def run() -> None:
  """Console script `fstfl-convert-weights`."""
  try:
    main()
  except (convert.ConversionError, ImportError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  run()

"""RandAugment for clips: one draw of ops and magnitudes per clip, applied to every frame.

Semantics of timm's `rand-m9-mstd0.5` as GSF's training script uses it (written for numpy/cv2,
uint8 RGB frames [H, W, 3]):
  * `num_ops` ops drawn uniformly, with replacement, from the 15 of `OPS`;
  * each op fires with probability 0.5;
  * its magnitude is N(magnitude, magnitude_std) clipped to [0, 10] (std 0: exactly
    `magnitude`; std inf: uniform in [0, magnitude]);
  * rotate / shear / translate take a random sign; geometric ops fill with the ImageNet mean
    colour (124, 116, 104).
Magnitude -> argument (timm's default, non-"increasing" mapping, level m in [0, 10]):
  Rotate 30 m/10 degrees; ShearX/Y 0.3 m/10; TranslateX/Y 0.45 m/10 of the width/height;
  Posterize keeps int(4 m/10) bits; Solarize inverts pixels >= int(256 m/10); SolarizeAdd adds
  int(110 m/10) below 128; Color/Contrast/Brightness/Sharpness blend with factor 0.1 + 1.8 m/10.
Per-frame randomness would destroy motion, so the draw (`sample_plan`) is per clip: every frame
gets the same ops, magnitudes, signs and interpolation (bilinear; the reference also draws
bicubic per frame). Image statistics (AutoContrast's range, Equalize's histogram, Contrast's
mean) are each frame's own, as in the reference. All randomness comes from the caller's
`np.random.Generator` (the pipeline's per-record rng), so checkpointed iterators replay it.
"""

import dataclasses
import re
from collections.abc import Sequence

import cv2
import numpy as np

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
       "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
       "TranslateY")
MAX_LEVEL = 10.0
OP_PROB = 0.5
FILL = (124, 116, 104)  # The ImageNet mean (transforms.IMAGENET_MEAN) x 255, rounded.
_SPEC_KEYS = {"n": "num_ops", "m": "magnitude", "mstd": "magnitude_std"}
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's SMOOTH filter.


@dataclasses.dataclass(frozen=True)
class Config:
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5


@dataclasses.dataclass(frozen=True)
class Op:
  """One op of a clip's plan: name, level in [0, 10], sign (+1/-1, for geometric ops)."""
  name: str
  level: float
  sign: int = 1


def parse_spec(spec: str) -> Config | None:
  """timm-style 'rand-m9-mstd0.5[-n2]' -> Config; '' -> None (off).

  Raises:
    ValueError: naming the spec and the part that is not `m<float>`, `n<int>` or `mstd<float>`.
  """
  if not spec:
    return None
  parts = spec.split("-")
  if parts[0] != "rand":
    raise ValueError(f"input.randaugment={spec!r}: expected '' or 'rand-m9-mstd0.5' style "
                     "(timm notation: rand, then m<magnitude>, n<ops>, mstd<std>).")
  values = {}
  for part in parts[1:]:
    match = re.fullmatch(r"(mstd|m|n)(inf|[0-9.]+)", part)
    if not match:
      raise ValueError(f"input.randaugment={spec!r}: cannot read {part!r}; expected m<float>, "
                       "n<int> or mstd<float>.")
    key, value = _SPEC_KEYS[match.group(1)], float(match.group(2))
    values[key] = int(value) if key == "num_ops" else value
  config = Config(**values)
  if not 0 <= config.magnitude <= MAX_LEVEL or config.num_ops < 1 or config.magnitude_std < 0:
    raise ValueError(f"input.randaugment={spec!r}: need 0 <= m <= 10, n >= 1, mstd >= 0.")
  return config


def sample_plan(config: Config, rng: np.random.Generator) -> list[Op]:
  """The ops that fire for one clip, in order; consumes a fixed amount of `rng` per op."""
  plan = []
  for name in rng.choice(OPS, size=config.num_ops, replace=True):
    fires, sign = rng.random() < OP_PROB, 1 if rng.random() < 0.5 else -1
    if config.magnitude_std == float("inf"):
      level = rng.uniform(0, config.magnitude)
    else:
      level = rng.normal(config.magnitude, config.magnitude_std)
    if fires:
      plan.append(Op(str(name), float(np.clip(level, 0, MAX_LEVEL)), sign))
  return plan


def _lut(frame: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Applies a [256] (all channels) or [3, 256] (per channel) uint8 lookup table."""
  table = np.broadcast_to(table, (3, 256))
  return np.stack([table[c][frame[..., c]] for c in range(3)], axis=-1)


def _blend(degenerate: np.ndarray | float, frame: np.ndarray, factor: float) -> np.ndarray:
  """PIL's blend: degenerate + factor * (frame - degenerate), clipped and truncated to uint8."""
  out = degenerate + factor * (frame.astype(np.float32) - degenerate)
  return np.clip(out, 0, 255).astype(np.uint8)


def _gray(frame: np.ndarray) -> np.ndarray:
  """PIL's 'L' conversion (ITU-R 601-2 luma, rounded), float32 [H, W, 1]."""
  r, g, b = (frame[..., c].astype(np.int32) for c in range(3))
  return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)[..., None].astype(np.float32)


def _autocontrast(frame: np.ndarray) -> np.ndarray:
  tables = []
  for c in range(3):
    lo, hi = int(frame[..., c].min()), int(frame[..., c].max())
    if hi <= lo:
      tables.append(np.arange(256))
      continue
    scale = 255.0 / (hi - lo)
    tables.append(np.clip((np.arange(256) - lo) * scale, 0, 255).astype(np.int64))
  return _lut(frame, np.asarray(tables, np.uint8))


def _equalize(frame: np.ndarray) -> np.ndarray:
  tables = []
  for c in range(3):
    hist = np.bincount(frame[..., c].ravel(), minlength=256)
    step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
    if step == 0:
      tables.append(np.arange(256))
      continue
    below = np.concatenate([[0], np.cumsum(hist)[:-1]])
    tables.append(np.minimum((step // 2 + below) // step, 255))
  return _lut(frame, np.asarray(tables, np.uint8))


def _warp(frame: np.ndarray, matrix: np.ndarray, inverse: bool) -> np.ndarray:
  """Affine warp (bilinear, mean-colour fill); `inverse`: matrix maps output to input pixels."""
  flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
  return cv2.warpAffine(frame, matrix, (frame.shape[1], frame.shape[0]), flags=flags,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)


def apply_op(frame: np.ndarray, op: Op) -> np.ndarray:
  """One op on one uint8 [H, W, 3] frame -> a new uint8 [H, W, 3] frame."""
  frac = op.level / MAX_LEVEL
  factor = 0.1 + 1.8 * frac
  height, width = frame.shape[:2]
  name = op.name
  if name == "AutoContrast":
    return _autocontrast(frame)
  if name == "Equalize":
    return _equalize(frame)
  if name == "Invert":
    return 255 - frame
  if name == "Posterize":
    bits = int(4 * frac)
    return frame & np.uint8((0xFF << (8 - bits)) & 0xFF)
  if name == "Solarize":
    values = np.arange(256)
    return _lut(frame, np.where(values < int(256 * frac), values, 255 - values).astype(np.uint8))
  if name == "SolarizeAdd":
    values = np.arange(256)
    added = np.minimum(values + int(110 * frac), 255)
    return _lut(frame, np.where(values < 128, added, values).astype(np.uint8))
  if name == "Color":
    return _blend(_gray(frame), frame, factor)
  if name == "Contrast":
    return _blend(float(int(_gray(frame).mean() + 0.5)), frame, factor)
  if name == "Brightness":
    return _blend(0.0, frame, factor)
  if name == "Sharpness":
    smooth = frame.astype(np.float32)
    inner = cv2.filter2D(smooth, -1, _SMOOTH)
    smooth[1:-1, 1:-1] = np.rint(inner[1:-1, 1:-1])  # PIL keeps the border pixels.
    return _blend(smooth, frame, factor)
  if name == "Rotate":  # Counter-clockwise for a positive angle, about the centre (PIL's).
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), op.sign * 30 * frac, 1.0)
    return _warp(frame, matrix, inverse=False)
  # The rest map each output pixel (x, y) to an input pixel, like PIL's Image.transform.
  shear, shift = op.sign * 0.3 * frac, op.sign * 0.45 * frac
  matrix = {"ShearX": [[1, shear, 0], [0, 1, 0]], "ShearY": [[1, 0, 0], [shear, 1, 0]],
            "TranslateX": [[1, 0, shift * width], [0, 1, 0]],
            "TranslateY": [[1, 0, 0], [0, 1, shift * height]]}.get(name)
  if matrix is None:
    raise ValueError(f"Unknown RandAugment op {name!r}; expected one of {OPS}.")
  return _warp(frame, np.asarray(matrix, np.float64), inverse=True)


def apply_plan(frame: np.ndarray, plan: Sequence[Op]) -> np.ndarray:
  """The clip's ops, in order, on one frame (uint8 [H, W, 3])."""
  for op in plan:
    frame = apply_op(frame, op)
  return frame


class AugmentedFrames(Sequence):
  """`frames` with `plan` applied to each on access (keeps a lazy decoder lazy)."""

  def __init__(self, frames: Sequence[np.ndarray], plan: Sequence[Op]):
    self._frames = frames
    self._plan = list(plan)

  def __len__(self) -> int:
    return len(self._frames)

  def __getitem__(self, t: int) -> np.ndarray:
    return apply_plan(self._frames[t], self._plan)

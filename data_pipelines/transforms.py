"""Per-clip image transforms: JPEG decode, TSN multi-scale crop, flips, test views.

Train clips leave the host as whole frames at stored resolution plus resize taps (crop box and
flip folded in); crop, resize and flip run on device (`device_transforms`). `crop_resize` is the
host reference of that pair and cuts the test views.

Geometry follows GSF/TSN (docs/data.md#train-augmentation, docs/data.md#test-views). Crops are
`(y, x, h, w)` boxes in pixels of the frame they are taken from; one box is shared by all frames
of a clip. Frames are uint8 RGB `[H, W, 3]`; clips are `[T, S, S, 3]` with S = crop_size.
"""

import functools
import re
from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np
import simplejpeg

from data_pipelines import randaugment as randaugment_lib
from data_pipelines.records import source

FLIP_POLICIES = ("none", "flip", "flip_swap_labels")
# A candidate crop side within this many pixels of crop_size snaps to crop_size (TSN's `< 3`).
_SNAP_PX = 3
# cv2's own thread pool would compete with the pipeline's reader threads on few cores.
cv2.setNumThreads(1)

Box = tuple[int, int, int, int]


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG bytes -> uint8 RGB [H, W, 3]; raises ValueError on corrupt data."""
  return simplejpeg.decode_jpeg(data, colorspace="RGB")


class JpegFrames(Sequence):
  """The frames `indices` of a video, decoded on access into one reused buffer.

  Each sampled frame's bytes are fetched once, at construction (with the shards' lazy
  `records.source.VideoFrames`, that is the only read of the video, all frames in one request
  batch). `frames[t]` is valid only until
  the next access; `decode_into` writes a frame into a caller's buffer instead (the train
  pipeline decodes straight into its batch array).

  Raises:
    ValueError: on a corrupt frame or one whose size differs from the first, prefixed by
      `describe(frame_index)`.
  """

  def __init__(self, jpegs: Sequence[bytes], indices: Sequence[int],
               describe: Callable[[int], str]):
    self._indices = [int(i) for i in indices]
    unique = sorted(set(self._indices))
    if isinstance(jpegs, source.VideoFrames):
      taken = jpegs.take(unique)
    else:
      taken = [jpegs[i] for i in unique]
    self._jpegs = dict(zip(unique, taken))
    self._describe = describe
    self.height, self.width = self._size(self._indices[0])
    self._buffer = None

  def _size(self, frame: int) -> tuple[int, int]:
    try:
      height, width, _, _ = simplejpeg.decode_jpeg_header(self._jpegs[frame])
    except ValueError as e:
      raise ValueError(f"{self._describe(frame)}: not a decodable JPEG ({e}).") from e
    return height, width

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, t: int) -> np.ndarray:
    if self._buffer is None:
      self._buffer = np.empty((self.height, self.width, 3), np.uint8)
    return self.decode_into(t, self._buffer)

  def decode_into(self, t: int, buffer: np.ndarray) -> np.ndarray:
    """Frame t decoded into `buffer` (any writable array of >= H * W * 3 bytes) -> [H, W, 3]."""
    frame = self._indices[t]
    size = self._size(frame)
    if size != (self.height, self.width):
      raise ValueError(f"{self._describe(frame)}: size {size} differs from frame "
                       f"{self._indices[0]}'s {(self.height, self.width)}.")
    try:
      return simplejpeg.decode_jpeg(self._jpegs[frame], colorspace="RGB", buffer=buffer)
    except ValueError as e:
      raise ValueError(f"{self._describe(frame)}: not a decodable JPEG ({e}).") from e


# --- Flip label swap -----------------------------------------------------------------------------

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_pairs_from_names(class_names: Sequence[str]) -> list[tuple[int, int]]:
  """Pairs (i, j), i < j, of classes whose names differ only by swapped words left/right.

  Words are matched whole, so "upright" or a name without a mirrored partner
  ("... pulling it right out ...") gives no pair. For Something-Something V1/V2 in
  alphabetical order this yields (86, 87), (93, 94), (166, 167).
  """
  def mirror(name: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", name)

  index = {name: i for i, name in enumerate(class_names)}
  pairs = set()
  for i, name in enumerate(class_names):
    j = index.get(mirror(name))
    if j is not None and j != i:
      pairs.add((min(i, j), max(i, j)))
  return sorted(pairs)


def flip_label_map(num_classes: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
  """Label of the mirrored clip for every label: identity with the pairs swapped. -> [C]."""
  table = np.arange(num_classes, dtype=np.int32)
  for i, j in pairs:
    table[i], table[j] = j, i
  return table


# --- Train geometry ------------------------------------------------------------------------------

def multiscale_sizes(height: int, width: int, crop_size: int,
                     scales: Sequence[float]) -> list[tuple[int, int]]:
  """The (crop_h, crop_w) candidates of TSN's multi-scale crop.

  Sides are int(short_side * scale), snapped to crop_size when within 3 px; height and width
  come from scales at most one index apart (10 pairs for 4 scales), so the aspect ratio may
  change. Sides are clipped to the frame, which only matters when snapping overshoots it.
  """
  base = min(height, width)
  sides = [int(base * s) for s in scales]
  sides = [crop_size if abs(s - crop_size) < _SNAP_PX else s for s in sides]
  return [(min(h, height), min(w, width))
          for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]


def fixed_offsets(height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
  """The 13 (y, x) offsets of TSN's `more_fix_crop` on a 5x5 lattice.

  Steps are ((H - h)//4, (W - w)//4): 4 corners, centre, 4 edge centres, 4 quarter points.
  """
  ys, xs = (height - crop_h) // 4, (width - crop_w) // 4
  lattice = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2),       # Corners, centre.
             (2, 0), (2, 4), (4, 2), (0, 2),               # Edge centres.
             (1, 1), (1, 3), (3, 1), (3, 3)]               # Quarter points.
  return [(a * ys, b * xs) for a, b in lattice]


def sample_multiscale_box(height: int, width: int, crop_size: int, scales: Sequence[float],
                          rng: np.random.Generator) -> Box:
  """One random multi-scale crop box (y, x, h, w) for a frame of the given size."""
  sizes, offsets = _box_candidates(height, width, crop_size, tuple(scales))
  size = rng.integers(len(sizes))
  y, x = offsets[size][rng.integers(len(offsets[size]))]
  return y, x, *sizes[size]


@functools.lru_cache(maxsize=1024)
def _box_candidates(height: int, width: int, crop_size: int, scales: tuple[float, ...]
                    ) -> tuple[list[tuple[int, int]], list[list[tuple[int, int]]]]:
  """Multi-scale sizes and, per size, the offsets: the same few lists for every clip."""
  sizes = multiscale_sizes(height, width, crop_size, scales)
  return sizes, [fixed_offsets(height, width, h, w) for h, w in sizes]


def _crop_resize_into(frame: np.ndarray, box: Box, flip: bool, dst: np.ndarray) -> None:
  y, x, h, w = box
  patch = frame[y:y + h, x:x + w]
  size = dst.shape[0]
  if flip:
    if (h, w) != (size, size):
      patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    cv2.flip(patch, 1, dst=dst)
  elif (h, w) != (size, size):
    cv2.resize(patch, (size, size), dst=dst, interpolation=cv2.INTER_LINEAR)
  else:
    dst[...] = patch


def crop_resize(frames: Sequence[np.ndarray], box: Box, size: int, flip: bool) -> np.ndarray:
  """Crops the same box from every frame, resizes to size x size (bilinear), mirrors if asked.

  Args:
    frames: T uint8 [H, W, 3] frames, read once each, in order (a `JpegFrames` works).
    box: (y, x, h, w).
    size: output side S.
    flip: mirror horizontally.
  Returns:
    uint8 [T, S, S, 3].
  """
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for t, frame in enumerate(frames):
    _crop_resize_into(frame, box, flip, out[t])
  return out


def frame_slot(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
  """(R, Wmax): a uint8 [R, Wmax, 3] slot holds any frame of the given (height, width) sizes.

  A frame is stored flat (row-major, its own row length) at the start of the slot; R leaves
  one spare row of Wmax pixels, so the device can read Wmax pixels from any of its rows.
  """
  sizes = list(sizes)
  wmax = max(w for _, w in sizes)
  return -(-max(h * w for h, w in sizes) // wmax) + 1, wmax


@functools.lru_cache(maxsize=8192)  # A few hundred (box, flip) combinations per frame size.
def resize_taps(length: int, size: int, flip: bool = False, offset: int = 0) -> np.ndarray:
  """Bilinear resampling of `length` pixels to `size` along one axis, as cv2's INTER_LINEAR.

  Output pixel i samples source position (i + 0.5) * length / size - 0.5, clamped to the edge
  pixels (cv2 clamps to the cropped patch, not to the frame). `flip` mirrors the output;
  `offset` shifts the source indices (the crop box's y or x).
  Returns:
    float32 [size, 3] (read-only, cached): (first source pixel, second source pixel, weight of
    the second).
  """
  pos = (np.arange(size) + 0.5) * (length / size) - 0.5
  first = np.floor(pos)
  weight = np.where(first < 0, 0.0, pos - first)
  first = np.clip(first, 0, length - 1)
  taps = np.stack([first + offset, np.minimum(first + 1, length - 1) + offset, weight], axis=-1)
  taps = (taps[::-1] if flip else taps).astype(np.float32)
  taps.setflags(write=False)
  return taps


def store_flat(frames: Sequence[np.ndarray], out: np.ndarray) -> None:
  """Frames [H, W, 3] row-major at the start of their slots; the rest of each slot is zero.

  Args:
    frames: T frames of one size, read once each, in order; a `JpegFrames` decodes straight
      into the slots.
    out: uint8 [T, R, Wmax, 3] slots (`frame_slot`).
  """
  flat = out.reshape(len(out), -1)
  for t in range(len(frames)):
    if isinstance(frames, JpegFrames):
      frame = frames.decode_into(t, flat[t, :frames.height * frames.width * 3])
    else:
      frame = frames[t]
      flat[t, :frame.size] = frame.reshape(-1)
  flat[:, frame.size:] = 0


def augment_train(frames: Sequence[np.ndarray], *, height: int, width: int, crop_size: int,
                  scales: Sequence[float], allow_flip: bool, rng: np.random.Generator,
                  out: np.ndarray, taps: np.ndarray,
                  randaugment: randaugment_lib.Config | None = None) -> bool:
  """Host half of the train augmentation: [RandAugment], multi-scale box and flip drawn.

  One box and one flip for all frames. The frames go to `out` whole, at stored resolution
  (`store_flat`); crop, resize and mirror run on device (`device_transforms.crop_resize` with
  the returned taps), inside the jitted step.

  Args:
    frames: T uint8 [H, W, 3] frames of size (height, width), read once each, in order.
    out: uint8 [T, R, Wmax, 3] slots for the frames (`frame_slot` of the split's sizes).
    taps: float32 [2, S, 3], set to the row and column taps of the frame (`resize_taps`).
    randaugment: a `data_pipelines.randaugment.Config`, or None (off). Its ops are drawn after
      the box and flip (so those do not depend on it) and applied to the full frames before
      the crop, as GSF's reference does.
  Returns:
    whether the clip is mirrored.
  """
  y, x, h, w = sample_multiscale_box(height, width, crop_size, scales, rng)
  flip = bool(allow_flip and rng.random() < 0.5)
  if randaugment is not None:
    frames = randaugment_lib.AugmentedFrames(frames, randaugment_lib.sample_plan(randaugment, rng))
  store_flat(frames, out)
  taps[0] = resize_taps(h, crop_size, offset=y)
  taps[1] = resize_taps(w, crop_size, flip, offset=x)
  return flip


# --- Test geometry -------------------------------------------------------------------------------

def resize_short_side(frame: np.ndarray, short: int) -> np.ndarray:
  """Bilinear resize so that min(H, W) == short, keeping the aspect ratio (TSN GroupScale)."""
  height, width = frame.shape[:2]
  if min(height, width) == short:
    return frame
  if height < width:
    new_h, new_w = short, int(short * width / height)
  else:
    new_h, new_w = int(short * height / width), short
  return cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def eval_boxes(height: int, width: int, size: int, crops: int) -> list[tuple[Box, bool]]:
  """Test crop boxes ((y, x, S, S), flip) for 1, 3 or 10 crops of a resized frame.

  1: centre crop (torchvision rounding). 3: left, right, centre squares on the lattice
  ((W - S)//4, (H - S)//4), vertically at 2 steps (TSN GroupFullResSample); portrait frames get
  top, bottom, centre instead (the reference would repeat one crop three times). 10: 4 corners +
  centre, then the same 5 mirrored (TSN GroupOverSample), with no label swap.
  """
  if size > min(height, width):
    raise ValueError(f"Crop {size} larger than the resized frame {height}x{width}.")
  ys, xs = (height - size) // 4, (width - size) // 4
  if crops == 1:
    return [((int(round((height - size) / 2)), int(round((width - size) / 2)), size, size), False)]
  if crops == 3:
    grid = [(2, 0), (2, 4), (2, 2)] if width >= height else [(0, 2), (4, 2), (2, 2)]
    return [((a * ys, b * xs, size, size), False) for a, b in grid]
  if crops == 10:
    five = [(a * ys, b * xs, size, size) for a, b in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]]
    return [(box, False) for box in five] + [(box, True) for box in five]
  raise ValueError(f"test_crops must be 1, 3 or 10, got {crops}.")


def eval_views(frames: Sequence[np.ndarray], *, resize_short: int, crop_size: int,
               crops: int) -> np.ndarray:
  """All test crops of one clip, frames read once each, in order. -> uint8 [crops, T, S, S, 3]."""
  out = np.empty((crops, len(frames), crop_size, crop_size, 3), np.uint8)
  for t, frame in enumerate(frames):
    resized = resize_short_side(frame, resize_short)
    if t == 0:
      boxes = eval_boxes(*resized.shape[:2], crop_size, crops)
    for c, (box, flip) in enumerate(boxes):
      _crop_resize_into(resized, box, flip, out[c, t])
  return out

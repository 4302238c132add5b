"""Train crop, resize and flip on the accelerator, inside the jitted step (pure jnp).

The host ships each clip's frames whole, at stored resolution, and the clip's resize taps
(`transforms.augment_train`):

  video        uint8 [B, T, R, Wmax, 3]  frame t of clip b stored flat (row-major, its own width
                                         W_b) at the start of video[b, t]; the rest is zero
  frame_width  int32 [B]                 W_b
  resize_taps  float32 [B, 2, S, 3]      rows, then columns: for every output pixel the two
                                         source pixels of the frame and the weight of the
                                         second (crop box and mirror folded in)

Frames of different sizes thus share one batch array, and the host neither crops nor copies
them: JPEG decoding writes straight into the batch. On device, each output row reads its two
source rows (a gather of contiguous Wmax-pixel runs), blends them, and a [S, Wmax] matmul
blends the columns: ~0.1 GFLOP per 224x224 frame from 256x340 (a ResNet-50 train step is
~12 GFLOP per frame), against ~1 ms of host CPU per 8-frame clip for cv2 (docs/benchmarks.md,
"Input pipeline on CPU"). Same geometry as the host's cv2 bilinear
crop + resize + flip (`transforms.crop_resize`), up to one level of rounding.
"""

from typing import Any

import jax
import jax.numpy as jnp

TAPS_KEY = "resize_taps"
WIDTH_KEY = "frame_width"


def _rows(flat: jax.Array, starts: jax.Array, length: int) -> jax.Array:
  """flat uint8 [L], starts int32 [...] -> uint8 [..., length]: runs flat[s:s + length]."""
  take = lambda s: jax.lax.dynamic_slice(flat, (s,), (length,))
  for _ in range(starts.ndim):
    take = jax.vmap(take)
  return take(starts)


def crop_resize(video: jax.Array, width: jax.Array, taps: jax.Array) -> jax.Array:
  """Crop, bilinear resize and mirror of whole stored frames, as the taps say.

  Args:
    video: uint8 [B, T, R, Wmax, 3], frames stored flat (module docstring).
    width: int32 [B], each clip's frame width.
    taps: float32 [B, 2, S, 3], row then column taps (`transforms.resize_taps`).
  Returns:
    uint8 [B, T, S, S, 3].
  """
  b, t, r, wmax, c = video.shape
  flat = video.reshape(b, t, r * wmax * c)
  row_taps = taps[:, 0]  # [B, S, 3]
  starts = row_taps[..., :2].astype(jnp.int32) * (width[:, None, None] * c)  # [B, S, 2]
  # [B, T, S, 2, Wmax * 3]: the two source rows of every output row (beyond W_b: ignored).
  rows = jax.vmap(lambda f, s: jax.vmap(lambda g: _rows(g, s, wmax * c))(f))(flat, starts)
  rows = rows.astype(jnp.float32).reshape(b, t, -1, 2, wmax, c)
  weight = row_taps[:, None, :, 2, None, None]  # [B, 1, S, 1, 1]
  blended = rows[:, :, :, 0] * (1.0 - weight) + rows[:, :, :, 1] * weight  # [B, T, S, Wmax, 3]
  col_taps = taps[:, 1]
  cols = (jax.nn.one_hot(col_taps[..., 0].astype(jnp.int32), wmax) * (1.0 - col_taps[..., 2:])
          + jax.nn.one_hot(col_taps[..., 1].astype(jnp.int32), wmax) * col_taps[..., 2:])
  # HIGHEST: uint8 levels and tap weights must stay exact (TPUs default to bfloat16 passes).
  out = jnp.einsum("bsw,btrwc->btrsc", cols, blended, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def train_video(batch: dict[str, Any]) -> jax.Array:
  """The batch's train clips uint8 [B, T, S, S, 3]: cut and resized here if it carries taps."""
  if TAPS_KEY not in batch:
    return batch["video"]
  return crop_resize(batch["video"], batch[WIDTH_KEY], batch[TAPS_KEY])

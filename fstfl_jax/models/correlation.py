"""Cosine correlation volumes for the STC module (paper §3.1, eq. 2; docs/correlation.md).

For a clip of feature maps x [B, T, H, W, C] and a temporal offset l, the volume holds, for every
query (t, i, j) and displacement (dy, dx) in [-D, D]^2, the cosine similarity between x[t, i, j]
and x[t + l, i + dy, j + dx]. Displacements are flattened row-major (dy outer, dx inner), so
k = (dy + D) * (2D + 1) + (dx + D); weight conversions must use the same order.

Implementations (all give the same values; they differ in speed and memory, see
docs/correlation.md#implementations and `benchmarks/correlation.py`):
  * "loop": one shifted slice and channel reduction per (offset, displacement). The test oracle.
  * "einsum": a `lax.scan` over displacements; each step is one einsum over channels batched over
    all offsets at once (the straightforward form; bandwidth-bound, slow at C=512).
  * "allpairs": per offset, one [HW x HW] matmul over channels, the partner axes zero-padded by
    D, then a reshape "skew" per spatial axis picks the (2D+1) diagonals (no gather, no
    per-displacement ops). Dense matmuls suit tensor cores / the MXU.
  * "banded": per offset and row offset dy, a banded [W x C] . [C x (W + 2D)] matmul per image row
    and a skew; a `lax.scan` over dy, so only one band is live. Smallest memory for large windows.
"""

from collections.abc import Callable, Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

IMPLS = ("loop", "einsum", "allpairs", "banded")
BOUNDARIES = ("zero", "clamp", "circular")

# impl="auto" per backend (measurements: docs/benchmarks.md;
# docs/correlation.md#choosing-an-implementation). CPU: all-pairs was the fastest and the
# smallest in memory at the res3 default. TPU: "einsum", the fewest bytes per step in the TPU
# compiler's numbers (`benchmarks/correlation_tpu.py`; every kernel is memory-bound there):
# all-pairs' D-padded [HW x (H+2D)W] volume is mostly padding that the skew then discards, and
# the banded kernel still forms a [W x (W + 2D)] product per row offset of which the skew keeps
# (2D + 1) x W, while the einsum scan computes only the kept pairs. Not settled: the compiler
# counts a scan's body once, so einsum's bytes are undercounted; `benchmarks.accelerator` times
# all three on a device. GPU: all-pairs (dense matmuls for tensor cores), not measured on a GPU.
_AUTO_IMPL = {"cpu": "allpairs", "gpu": "allpairs", "tpu": "einsum"}


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Scales each channel vector to unit L2 norm, in float32.

  `x * rsqrt(sum(x^2) + eps)`, not `x / jnp.linalg.norm(x)`: the latter has a NaN gradient at an
  all-zero vector (post-ReLU features have some), while this gives exactly 0 with finite gradients.

  Args:
    x: [..., C], any float dtype.
    eps: added to the sum of squares inside the square root.

  Returns:
    float32 [..., C].
  """
  x = x.astype(jnp.float32)
  return x * lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def temporal_validity(num_frames: int, offsets: Sequence[int], boundary: str) -> np.ndarray:
  """Marks which (t, l) entries of the volume compare frame t with the real frame t + l.

  Whatever the boundary mode, a pair is real only when 0 <= t + l < T: "clamp" and "circular"
  substitute another frame there and "zero" writes zeros, so all three get 0 (this is the optional
  mask channel that lets the network tell "dissimilar" from "no partner").

  Args:
    num_frames: T.
    offsets: the temporal offsets l.
    boundary: "zero" | "clamp" | "circular" (checked; the mask does not depend on it).

  Returns:
    float32 [T, L].
  """
  _check_choice("boundary", boundary, BOUNDARIES)
  partner = np.arange(num_frames)[:, None] + np.asarray(offsets, dtype=np.int64)[None, :]
  return ((partner >= 0) & (partner < num_frames)).astype(np.float32)


def correlate(x: jax.Array, *, max_disp: int, offsets: Sequence[int], boundary: str = "zero",
              impl: str = "auto", eps: float = 1e-6, remat: bool = True,
              valid_pairs_only: bool = True) -> jax.Array:
  """Cosine correlation volume of every frame with its temporal partners (paper eq. 2).

  S[b, t, i, j, l, k] = <xn[b, t, i, j], xn[b, t', i + dy, j + dx]>, t' = t + offsets[l],
  k = (dy + D) * (2D + 1) + (dx + D), xn = l2_normalize(x). Zero where (i + dy, j + dx) is outside
  the frame (zero spatial padding, paper §3.1 step 1). Where t' is outside [0, T): "zero" -> 0,
  "clamp" -> t' clipped to [0, T - 1], "circular" -> t' mod T. Clips (b) never mix.

  The normalised features are cast back to x's dtype for the products (bf16 matmuls on
  accelerators) and every sum is accumulated in float32.

  Args:
    x: [B, T, H, W, C], any float dtype.
    max_disp: D >= 0; K = (2D + 1)^2 displacements.
    offsets: L temporal offsets (negative allowed, e.g. SELFY's -2..2).
    boundary: temporal boundary mode, see above.
    impl: "loop" | "einsum" | "allpairs" | "banded" | "auto" (module docstring; "auto" picks by
      backend).
    eps: normalisation epsilon (see `l2_normalize`).
    remat: wrap each offset's computation (and the banded / einsum scan step) in `jax.checkpoint`,
      so the backward pass keeps only x instead of the per-offset intermediates.
    valid_pairs_only: with boundary "zero", compute only the frame pairs with t' in range and write
      zeros elsewhere (same output, fewer MACs). False computes every pair against zero frames.
      "einsum" batches all offsets into one einsum, so it always computes every pair.

  Returns:
    float32 [B, T, H, W, L, K].
  """
  if x.ndim != 5:
    raise ValueError(f"correlate expects x of shape [B, T, H, W, C], got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"correlate expects a float input, got dtype {x.dtype}.")
  if max_disp < 0:
    raise ValueError(f"max_disp must be >= 0, got {max_disp}.")
  if not offsets:
    raise ValueError("offsets must hold at least one temporal offset.")
  _check_choice("boundary", boundary, BOUNDARIES)
  impl = resolve_impl(impl)
  offsets = tuple(int(l) for l in offsets)

  # The products use x's dtype (bf16 stays bf16 for the MXU / tensor cores); sums are float32.
  xn = l2_normalize(x, eps).astype(x.dtype)
  if impl == "einsum":
    fn = functools.partial(_correlate_einsum, max_disp=max_disp, offsets=offsets,
                           boundary=boundary, remat=remat)
    return (jax.checkpoint(fn) if remat else fn)(xn)

  pair_fn = functools.partial(
    {"loop": _pairs_loop, "allpairs": _pairs_allpairs, "banded": _pairs_banded}[impl],
    max_disp=max_disp)
  if impl == "banded":
    pair_fn = functools.partial(pair_fn, remat=remat)
  volumes = []
  for offset in offsets:
    fn = functools.partial(_correlate_offset, pair_fn=pair_fn, max_disp=max_disp, offset=offset,
                           boundary=boundary, valid_pairs_only=valid_pairs_only)
    volumes.append((jax.checkpoint(fn) if remat else fn)(xn))
  return jnp.stack(volumes, axis=4)


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """Maps "auto" to the implementation chosen for `backend` (default: JAX's default backend).

  Ahead-of-time compiles for another platform (`fstfl_jax.tools.aot`) pass that platform.
  """
  _check_choice("impl", impl, IMPLS + ("auto",))
  if impl != "auto":
    return impl
  return _AUTO_IMPL.get(backend or jax.default_backend(), "allpairs")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"Unknown correlation {name} {value!r}; expected one of {tuple(choices)}.")


def _partner_index(num_frames: int, offset: int, boundary: str) -> np.ndarray:
  """[T] partner frame of each frame t under the boundary mode; -1 means a zero frame."""
  partner = np.arange(num_frames) + offset
  if boundary == "clamp":
    return np.clip(partner, 0, num_frames - 1)
  if boundary == "circular":
    return partner % num_frames
  return np.where((partner >= 0) & (partner < num_frames), partner, -1)


def _take_frames(x: jax.Array, index: np.ndarray) -> jax.Array:
  """x[:, index] for a static index (-1 -> zero frame), built from slices and concatenation.

  Contiguous runs become slices rather than a gather, which accelerators handle poorly.
  """
  runs = []  # [start (-1: zeros), length]
  for t in index.tolist():
    if runs and ((t == -1 and runs[-1][0] == -1) or
                 (t != -1 and runs[-1][0] != -1 and runs[-1][0] + runs[-1][1] == t)):
      runs[-1][1] += 1
    else:
      runs.append([t, 1])
  pieces = [jnp.zeros((x.shape[0], length) + x.shape[2:], x.dtype) if start == -1
            else x[:, start:start + length] for start, length in runs]
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def _correlate_offset(xn: jax.Array, *, pair_fn: Callable[[jax.Array, jax.Array], jax.Array],
                      max_disp: int, offset: int, boundary: str,
                      valid_pairs_only: bool) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H, W, K]: the volume of one temporal offset."""
  batch, frames, height, width, _ = xn.shape
  if boundary == "zero" and valid_pairs_only:
    # Only frames t with t + offset in [0, T) have a partner; the rest of the volume is zero.
    first, stop = max(0, -offset), min(frames, frames - offset)
    if stop <= first:
      return jnp.zeros((batch, frames, height, width, (2 * max_disp + 1) ** 2), jnp.float32)
    volume = pair_fn(xn[:, first:stop], xn[:, first + offset:stop + offset])
    return jnp.pad(volume, [(0, 0), (first, frames - stop), (0, 0), (0, 0), (0, 0)])
  return pair_fn(xn, _take_frames(xn, _partner_index(frames, offset, boundary)))


def _pad_space(x: jax.Array, max_disp: int) -> jax.Array:
  """Zero-pads the H and W axes of [B, T, H, W, C] by D on each side."""
  pad = (max_disp, max_disp)
  return jnp.pad(x, [(0, 0), (0, 0), pad, pad, (0, 0)])


def _skew(m: jax.Array, max_disp: int) -> jax.Array:
  """[..., n, n + 2D] -> [..., n, 2D + 1] with out[..., i, k] = m[..., i, i + k].

  Flattening the last two axes, appending n zeros and re-reading the result with rows one element
  longer shifts row i left by i, so each diagonal becomes a column: pure pad/reshape/slice.
  """
  *lead, n, width = m.shape
  flat = jnp.pad(m.reshape(*lead, n * width), [(0, 0)] * len(lead) + [(0, n)])
  return flat.reshape(*lead, n, width + 1)[..., :2 * max_disp + 1]


def _pairs_loop(query: jax.Array, partner: jax.Array, *, max_disp: int) -> jax.Array:
  """Reference: [B, T', H, W, C] x2 -> [B, T', H, W, K], one slice per displacement."""
  _, _, height, width, _ = query.shape
  padded = _pad_space(partner, max_disp).astype(jnp.float32)
  query = query.astype(jnp.float32)
  span = range(2 * max_disp + 1)
  return jnp.stack([jnp.sum(query * padded[:, :, dy:dy + height, dx:dx + width], axis=-1)
                    for dy in span for dx in span], axis=-1)


def _pairs_allpairs(query: jax.Array, partner: jax.Array, *, max_disp: int) -> jax.Array:
  """All-pairs matmul then skew: [B, T', H, W, C] x2 -> [B, T', H, W, K].

  See docs/correlation.md#allpairs.
  """
  batch, frames, height, width, _ = query.shape
  pad = (max_disp, max_disp)
  # Unpadded matmul, then pad: padding the partner first costs (H+2D)(W+2D)/(HW) more MACs and
  # memory. Layout [B, T', W, V, H, U] puts (H, U) last for the first skew.
  sim = jnp.einsum("bthwc,btuvc->btwvhu", query, partner, preferred_element_type=jnp.float32)
  sim = _skew(jnp.pad(sim, [(0, 0)] * 5 + [pad]), max_disp)  # [B, T', W, V, H, dy]
  sim = sim.transpose(0, 1, 4, 5, 2, 3)                        # [B, T', H, dy, W, V]
  sim = _skew(jnp.pad(sim, [(0, 0)] * 5 + [pad]), max_disp)  # [B, T', H, dy, W, dx]
  sim = sim.transpose(0, 1, 2, 4, 3, 5)                        # [B, T', H, W, dy, dx]
  return sim.reshape(batch, frames, height, width, -1)


def _pairs_banded(query: jax.Array, partner: jax.Array, *, max_disp: int,
                  remat: bool) -> jax.Array:
  """Banded matmul per row offset: [B, T', H, W, C] x2 -> [B, T', H, W, K].

  See docs/correlation.md#banded.
  """
  batch, frames, height, width, _ = query.shape
  padded = _pad_space(partner, max_disp)

  def row_offset(carry, dy):
    rows = lax.dynamic_slice_in_dim(padded, dy, height, axis=2)  # [B, T', H, W + 2D, C]
    band = jnp.einsum("bthwc,bthvc->bthwv", query, rows, preferred_element_type=jnp.float32)
    return carry, _skew(band, max_disp)                         # [B, T', H, W, dx]

  # Without the checkpoint the backward would keep every step's partner rows
  # (docs/correlation.md#rematerialisation).
  step = jax.checkpoint(row_offset) if remat else row_offset
  _, sim = lax.scan(step, None, jnp.arange(2 * max_disp + 1))  # [dy, B, T', H, W, dx]
  return jnp.moveaxis(sim, 0, 4).reshape(batch, frames, height, width, -1)


def _correlate_einsum(xn: jax.Array, *, max_disp: int, offsets: tuple[int, ...], boundary: str,
                      remat: bool) -> jax.Array:
  """Per displacement, one einsum over channels batched over offsets: -> [B, T, H, W, L, K].

  Batching the offsets needs one partner stack [L, B, T, H, W, C] of equal shapes, so frames
  without a partner are compared with zero frames (boundary "zero") instead of being skipped.
  The displacements run as a `lax.scan`: unrolled, XLA:CPU materialises every shifted window,
  and vmapped, every backend does (docs/correlation.md#rejected-designs).
  """
  _, frames, height, width, _ = xn.shape
  partners = jnp.stack([_pad_space(_take_frames(xn, _partner_index(frames, l, boundary)),
                                   max_disp) for l in offsets])  # [L, B, T, H + 2D, W + 2D, C]
  span = 2 * max_disp + 1

  def displacement(carry, k):
    window = lax.dynamic_slice(partners, (0, 0, 0, k // span, k % span, 0),
                               partners.shape[:3] + xn.shape[2:])
    return carry, jnp.einsum("bthwc,lbthwc->bthwl", xn, window,
                             preferred_element_type=jnp.float32)

  # Without the checkpoint the backward would keep every step's window
  # (docs/correlation.md#rematerialisation).
  step = jax.checkpoint(displacement) if remat else displacement
  _, sim = lax.scan(step, None, jnp.arange(span * span))  # [K, B, T, H, W, L]
  return jnp.moveaxis(sim, 0, -1)

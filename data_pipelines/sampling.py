"""Frame index sampling for video clips (0-based indices, pure numpy).

Sparse (TSN segment) sampling follows GSF's dataset code (docs/data.md#frame-sampling) with its
1-based file numbering removed. Dense sampling takes `T` frames `stride` apart from one window.

Every function returns int64 indices into the `n` stored frames of one video:
`[T]` for one clip, `[K, T]` for `K` test clips.
"""

import numpy as np

SAMPLINGS = ("tsn", "dense")
CLIP_SAMPLINGS = ("uniform", "random")


def _check(n: int, num_frames: int) -> None:
  if n < 1:
    raise ValueError(f"Cannot sample from a video with {n} frames.")
  if num_frames < 1:
    raise ValueError(f"num_frames must be positive, got {num_frames}.")


def tsn_train(n: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """One random TSN draw: a uniform offset inside each of `T` equal segments. -> [T].

  With d = n // T > 0, index_t = t*d + U{0..d-1}. With d == 0 (n < T) the reference falls
  back to the segment centres, so frames repeat. (Its other fallback, T sorted draws when
  n > T, cannot trigger once d == 0 and is therefore not reproduced.)
  """
  _check(n, num_frames)
  d = n // num_frames
  if d == 0:
    return tsn_clips(n, num_frames, 1)[0]
  return np.arange(num_frames) * d + rng.integers(0, d, size=num_frames)


def tsn_clips(n: int, num_frames: int, num_clips: int) -> np.ndarray:
  """`K` deterministic TSN clips on a shifted segment grid. -> [K, T].

  With segment length s = n / T, clip k takes index_t = int(s * f_k + s * t), where
  f_k = (1/2 + k/K) mod 1 is the clip's fractional position inside each segment, i.e. the
  segment-centre grid shifted by k/K of a segment:
    K = 1: f = 1/2, the segment centres int(n/(2T) + t*n/T) (GSF validation, 1 clip).
    K = 2: f = 1/2 and 0, the two clips of GSF's `test_models.py` (in swapped order).
    K > 2: K clips evenly spread over each segment.
  """
  _check(n, num_frames)
  if num_clips < 1:
    raise ValueError(f"num_clips must be positive, got {num_clips}.")
  seg = n / num_frames
  t = np.arange(num_frames)
  rows = []
  for k in range(num_clips):
    # f_k = ((K + 2k) mod 2K) / 2K in one rounding; seg * f + seg * t is the reference's float
    # expression for K <= 2, so indices match it bit for bit (exact rationals would not).
    frac = ((num_clips + 2 * k) % (2 * num_clips)) / (2 * num_clips)
    rows.append((seg * frac + seg * t).astype(np.int64))
  # Float rounding must never step past the last frame.
  return np.minimum(np.stack(rows), n - 1)


def tsn_random_clips(n: int, num_frames: int, num_clips: int,
                     rng: np.random.Generator) -> np.ndarray:
  """`K` independent random TSN draws, GSF's "10 clips" test protocol. -> [K, T]."""
  return np.stack([tsn_train(n, num_frames, rng) for _ in range(num_clips)])


def _dense_starts_range(n: int, num_frames: int, stride: int) -> int:
  """Number of valid window starts: windows of T*stride frames that fit (at least one)."""
  if stride < 1:
    raise ValueError(f"dense_stride must be positive, got {stride}.")
  return max(1, n - num_frames * stride + 1)


def _dense_window(n: int, num_frames: int, stride: int, start: int) -> np.ndarray:
  # Videos shorter than the window wrap around, as the reference dense sampler does.
  return (start + stride * np.arange(num_frames)) % n


def dense_train(n: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
  """`T` frames `stride` apart from a uniformly placed window of T*stride frames. -> [T]."""
  _check(n, num_frames)
  start = int(rng.integers(0, _dense_starts_range(n, num_frames, stride)))
  return _dense_window(n, num_frames, stride, start)


def dense_clips(n: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
  """`K` dense windows: K = 1 centred, else starts evenly spaced from first to last. -> [K, T]."""
  _check(n, num_frames)
  positions = _dense_starts_range(n, num_frames, stride)
  if num_clips == 1:
    starts = [(positions - 1) // 2]
  else:
    starts = np.linspace(0, positions - 1, num=num_clips).astype(np.int64)
  return np.stack([_dense_window(n, num_frames, stride, int(s)) for s in starts])


def train_indices(n: int, num_frames: int, rng: np.random.Generator, *, sampling: str = "tsn",
                  dense_stride: int = 8) -> np.ndarray:
  """Training clip indices for the configured sampling. -> [T]."""
  if sampling == "tsn":
    return tsn_train(n, num_frames, rng)
  if sampling == "dense":
    return dense_train(n, num_frames, dense_stride, rng)
  raise ValueError(f"Unknown sampling {sampling!r}; expected one of {SAMPLINGS}.")


def eval_indices(n: int, num_frames: int, num_clips: int, *, sampling: str = "tsn",
                 dense_stride: int = 8, clip_sampling: str = "uniform",
                 rng: np.random.Generator | None = None) -> np.ndarray:
  """Test clip indices. -> [K, T].

  `clip_sampling="random"` (TSN only) needs `rng`; the caller seeds it per video so the
  views do not depend on batching or on the number of processes.
  """
  if sampling == "dense":
    return dense_clips(n, num_frames, dense_stride, num_clips)
  if sampling != "tsn":
    raise ValueError(f"Unknown sampling {sampling!r}; expected one of {SAMPLINGS}.")
  if clip_sampling == "uniform":
    return tsn_clips(n, num_frames, num_clips)
  if clip_sampling == "random":
    if rng is None:
      raise ValueError("clip_sampling='random' needs an rng.")
    return tsn_random_clips(n, num_frames, num_clips, rng)
  raise ValueError(f"Unknown clip_sampling {clip_sampling!r}; expected one of {CLIP_SAMPLINGS}.")

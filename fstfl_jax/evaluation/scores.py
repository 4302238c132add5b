"""Per-video score files: what `--mode eval --eval_predictions` writes and ensembles read.

`<workdir>/eval_<protocol>_step<N>_predictions.jsonl` holds one JSON object per video:

  {"index": 17, "video_id": "a/b.mp4", "label": 3, "top5": [3, 1, ...],
   "top5_logits": [4.2, 1.0, ...], "logits": [0.1, 1.0, -2.3, 4.2, ...]}

index: record index in the eval split; video_id: the record's id (absent when the eval input
carries none); logits: the view-averaged logits of every class (float32 values, written in full
precision so an ensemble of score files equals an ensemble of the models).
"""

import json
import re
from collections.abc import Sequence
from typing import Any

from etils import epath
from jax.experimental import multihost_utils
import numpy as np

_STEP = re.compile(r"_step(\d+)_predictions\.jsonl$")


def prediction_rows(logits: np.ndarray, label: np.ndarray, index: np.ndarray, mask: np.ndarray,
                    video_id: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """One row per unmasked video (module docstring); top-5 ties go to the lower class id.

  Args:
    logits: [B, K] view-averaged logits.
    label, index, mask: [B] label, record index and validity (False on padding).
    video_id: B record ids, or None.
  """
  k = min(5, logits.shape[-1])
  order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  rows = []
  for r in np.flatnonzero(mask):
    row = dict(index=int(index[r]), label=int(label[r]))
    if video_id is not None:
      row["video_id"] = str(video_id[r])
    row.update(top5=order[r].tolist(), top5_logits=np.round(logits[r, order[r]], 5).tolist(),
               logits=logits[r].astype(np.float64).tolist())
    rows.append(row)
  return rows


def allgather_strings(local: Sequence[str]) -> list[str]:
  """Every process's strings, concatenated in process order (like `process_allgather(tiled)`).

  Strings travel as int32 code points padded to the longest string of any process.
  """
  codes = [np.frombuffer(s.encode("utf-32-le"), np.int32) for s in local]
  width = int(np.max(multihost_utils.process_allgather(
    np.int32(max((len(c) for c in codes), default=0)))))
  padded = np.zeros((len(codes), max(width, 1)), np.int32)
  for row, c in zip(padded, codes):
    row[:len(c)] = c
  gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
  return [r[r != 0].astype("<u4").tobytes().decode("utf-32-le") for r in gathered]


def score_file(workdir: str, protocol: str, step: int | None = None) -> epath.Path:
  """The predictions file of `protocol` in `workdir`: at `step`, or the highest step present."""
  root = epath.Path(workdir)
  if step is not None:
    path = root / f"eval_{protocol}_step{step}_predictions.jsonl"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist; run `python -m fstfl_jax.main --mode eval "
                              f"--eval_protocol {protocol} --eval_predictions` on {workdir}.")
    return path
  found = {int(_STEP.search(p.name).group(1)): p
           for p in root.glob(f"eval_{protocol}_step*_predictions.jsonl")
           if _STEP.search(p.name)}
  if not found:
    raise FileNotFoundError(
      f"{workdir}: no eval_{protocol}_step*_predictions.jsonl; run `python -m fstfl_jax.main "
      f"--config <its config> --workdir {workdir} --mode eval --eval_protocol {protocol} "
      "--eval_predictions` first.")
  return found[max(found)]


def read_scores(path: epath.PathLike) -> dict[str, Any]:
  """Reads a predictions file into arrays sorted by record index.

  Returns:
    {"index": int64 [N], "label": int64 [N], "logits": float64 [N, K],
     "video_id": list of N str, or None when the file has none}.

  Raises:
    ValueError: naming the file and line, for a row without full logits, a repeated index, or
      rows with different class counts.
  """
  path = epath.Path(path)
  rows = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    row = json.loads(line)
    for key in ("index", "label", "logits"):
      if key not in row:
        raise ValueError(f"{path} line {n}: no {key!r}; expected a score file written by "
                         "`--mode eval --eval_predictions` (re-run that eval).")
    if rows and len(row["logits"]) != len(rows[0]["logits"]):
      raise ValueError(f"{path} line {n}: {len(row['logits'])} logits, line 1 has "
                       f"{len(rows[0]['logits'])}.")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path} holds no videos.")
  rows.sort(key=lambda r: r["index"])
  index = np.array([r["index"] for r in rows], np.int64)
  if np.any(np.diff(index) == 0):
    raise ValueError(f"{path}: video index {int(index[np.flatnonzero(np.diff(index) == 0)[0]])} "
                     "appears twice.")
  has_ids = all("video_id" in r for r in rows)
  return dict(index=index, label=np.array([r["label"] for r in rows], np.int64),
              logits=np.array([r["logits"] for r in rows], np.float64),
              video_id=[r["video_id"] for r in rows] if has_ids else None)

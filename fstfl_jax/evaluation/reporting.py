"""Files an evaluation leaves for people: JSON summaries, confusion PNGs, per-video predictions.

Local paths or `gs://`; nothing here runs on the accelerator.

Eval outputs per protocol (process 0 writes): `<workdir>/eval_<name>_step<N>.json` (top-1,
top-5, mean class accuracy, loss, video count, confusion matrix),
`eval_<name>_step<N>_confusion.png` and, on request, `eval_<name>_step<N>_predictions.jsonl`
(one line per video with the logits of every class, the input of `fstfl_jax.apps.ensemble`;
format in `fstfl_jax.evaluation.scores`).
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from data_pipelines import storage

# Above this many classes the confusion plot carries no tick labels (they would overlap).
MAX_LABELLED_CLASSES = 30


def pyplot() -> Any:
  """matplotlib's pyplot on the file-only Agg backend (imported on first use: plots only)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_confusion_png(confusion: np.ndarray, path: str, *, title: str = "",
                       class_names: Sequence[str] | None = None) -> None:
  """Row-normalised confusion matrix [K, K] as a PNG (rows: true class, columns: predicted).

  With at most `MAX_LABELLED_CLASSES` classes the axes carry the class names (or ids). The PNG
  text chunk `num_classes` records K.
  """
  confusion = np.asarray(confusion, np.float64)
  k = confusion.shape[0]
  if confusion.shape != (k, k):
    raise ValueError(f"Confusion matrix must be square, got {confusion.shape}.")
  if class_names is not None and len(class_names) != k:
    raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix.")
  plt = pyplot()
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  side = float(np.clip(k * 0.35, 5, 16))  # Inches of the matrix; names need room too.
  fig, ax = plt.subplots(figsize=(side + 3, side + 2))
  image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  if k <= MAX_LABELLED_CLASSES:
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100, metadata={"Title": title, "num_classes": str(k)})
  plt.close(fig)


def write_results(workdir: str, name: str, step: int, result: Mapping[str, Any], *,
                  protocol: Mapping[str, Any] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
  """Writes one protocol's JSON summary, confusion PNG and any predictions (process 0 only).

  `result` is an `evaluate.evaluate_state` result. Returns the path of the JSON summary.
  """
  stem = os.fspath(storage.path(workdir) / f"eval_{name}_step{step}")
  if jax.process_index() != 0:
    return stem + ".json"
  summary = {k: v for k, v in result.items() if k not in ("confusion", "predictions")}
  summary = dict(name=name, step=step, protocol=dict(protocol or {}), **summary,
                 confusion=np.asarray(result["confusion"]).tolist())
  storage.write_json(stem + ".json", summary, indent=1)
  save_confusion_png(result["confusion"], stem + "_confusion.png", class_names=class_names,
                     title=f"{name} step {step}: top-1 {100 * result['top1']:.2f}%")
  if "predictions" in result:
    storage.write_text(stem + "_predictions.jsonl",
                       "".join(json.dumps(row) + "\n" for row in result["predictions"]))
  return stem + ".json"

"""One path layer for every user path: local files and `gs://` URLs, through `etils.epath`.

Workdirs, checkpoints, logs, eval outputs, predict/Grad-CAM inputs and outputs and a data dir's
metadata all go through `path()`, so a `gs://bucket/run` workdir behaves like a local one and
nothing is ever written to a local directory named after a URL. Orbax gets the URL unchanged.
The endpoint of Cloud Storage comes from the standard environment only
(`STORAGE_EMULATOR_HOST` for the Python clients, `TENSORSTORE_GCS_HTTP_URL` for TensorStore),
so the same command runs against real GCS and against a local emulator.

Cloud Storage objects cannot be appended to or renamed atomically: writers here rewrite whole
objects (one upload is atomic), and local files are replaced through a temporary file, so a
crash never leaves a half-written file behind.
"""

import io
import json
import os
import tempfile
from typing import Any

from etils import epath

from data_pipelines.cli import UserError

REMOTE_SCHEMES = ("gs",)


class StorageError(UserError, ValueError):
  """A user path that cannot be used; the message names the path and the fix."""


def scheme(p: str | os.PathLike) -> str:
  """'' for a local path, else the URL scheme ('gs', 's3', ...)."""
  text = os.fspath(p)
  return text.split("://", 1)[0] if "://" in text else ""


def is_remote(p: str | os.PathLike) -> bool:
  return bool(scheme(p))


def path(p: str | os.PathLike) -> epath.Path:
  """The `epath.Path` of a user path: absolute for local paths, URLs unchanged.

  Raises:
    StorageError: a URL whose scheme is not supported (never silently a local directory).
  """
  text = os.fspath(p)
  s = scheme(text)
  if s and s not in REMOTE_SCHEMES:
    raise StorageError(f"{text}: unsupported storage scheme {s}://; use a local path or "
                       "gs://bucket/path.")
  return epath.Path(text if s else os.path.abspath(text))


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
  """Writes a whole file atomically: readers see the old content or the new, never a part."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)  # One upload: the object appears complete or not at all.
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(target.parent), prefix=f".{target.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, os.fspath(target))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(p: str | os.PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def read_text(p: str | os.PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def write_json(p: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
  write_text(p, json.dumps(obj, **dump_kwargs))


def read_json(p: str | os.PathLike) -> Any:
  """Parsed JSON; a file that does not parse is one error naming it."""
  text = read_text(p)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise StorageError(f"{p}: not valid JSON ({e}).") from None


def save_figure(fig: Any, p: str | os.PathLike, **savefig_kwargs: Any) -> None:
  """A matplotlib figure to a local or remote file (format from the suffix)."""
  buf = io.BytesIO()
  fmt = os.fspath(p).rsplit(".", 1)[-1].lower()
  fig.savefig(buf, format=fmt, **savefig_kwargs)
  write_bytes(p, buf.getvalue())


def mirror_dir(local_dir: str, remote_dir: str | os.PathLike,
               uploaded: dict[str, int]) -> None:
  """Uploads the files of `local_dir` whose size changed since the last call.

  `uploaded` ({name: size}) is the caller's memory of what was sent. Used for writers that
  append to their files (TensorBoard events), which Cloud Storage cannot do in place.
  """
  for name in sorted(os.listdir(local_dir)):
    local = os.path.join(local_dir, name)
    if not os.path.isfile(local):
      continue
    size = os.path.getsize(local)
    if uploaded.get(name) != size:
      with open(local, "rb") as f:
        write_bytes(path(remote_dir) / name, f.read())
      uploaded[name] = size


def check_workdir(p: str | os.PathLike) -> epath.Path:
  """The workdir as a path; an existing file there is an error (it must be a directory)."""
  workdir = path(p)
  if workdir.exists() and not workdir.is_dir():
    raise StorageError(f"--workdir {p}: is a file, expected a directory (choose another path).")
  return workdir

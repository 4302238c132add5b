"""One path layer for every user path: local files and `gs://` URLs, through `etils.epath`.

Workdirs, checkpoints, logs, eval outputs, predict/Grad-CAM inputs and outputs, source videos,
data dirs and their shards all go through this module, so a `gs://bucket/run` path behaves like
a local one and nothing is ever written to a local directory named after a URL. Orbax gets the
URL unchanged. The endpoint of Cloud Storage comes from the standard environment only
(`data_pipelines.gcs`), so the same command runs against real GCS and a local emulator.

Cloud Storage objects cannot be appended to or renamed atomically: writers here rewrite whole
objects (one upload is atomic: the object appears complete or not at all), and local files are
replaced through a temporary file, so a crash never leaves a half-written file behind.
`read_ranges` reads byte ranges of one file, concurrently on a bucket (one bounded GET each);
`copy_file` moves whole files between the two, in parallel parts when they are large.
"""

import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
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


def read_bytes(p: str | os.PathLike) -> bytes:
  return path(p).read_bytes()


def _gcs() -> Any:
  """The process's gcsfs filesystem (fsspec caches one instance per process)."""
  import gcsfs  # pylint: disable=g-import-not-at-top  (only bucket paths need it)
  return gcsfs.GCSFileSystem()


def read_ranges(p: str | os.PathLike, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
  """The bytes [start, end) of each range of one file.

  On a bucket every range is one bounded GET and they run concurrently on pooled connections;
  locally they are `pread`s.
  """
  if not ranges:
    return []
  if is_remote(p):
    text = os.fspath(p)
    return _gcs().cat_ranges([text] * len(ranges), [a for a, _ in ranges],
                             [b for _, b in ranges], on_error="raise")
  fd = os.open(os.fspath(p), os.O_RDONLY)
  try:
    return [os.pread(fd, b - a, a) for a, b in ranges]
  finally:
    os.close(fd)


def read_files(paths: Sequence[str | os.PathLike]) -> list[bytes]:
  """Whole files, concurrently when they are on a bucket (one listing-free GET each)."""
  texts = [os.fspath(p) for p in paths]
  if texts and all(is_remote(t) for t in texts):
    found = _gcs().cat(texts, on_error="raise")  # Keyed by the path without its gs://.
    return [found[t.split("://", 1)[1]] for t in texts]
  return [read_bytes(t) for t in texts]


def listdir(p: str | os.PathLike) -> list[str]:
  """Sorted names of the entries of directory `p` (one paged listing on a bucket)."""
  if is_remote(p):
    return sorted(child.name for child in path(p).iterdir())
  return sorted(os.listdir(os.fspath(p)))


def scandir(p: str | os.PathLike) -> list[tuple[str, bool]]:
  """Sorted (name, is a directory) of the entries of `p` (one paged listing on a bucket)."""
  if is_remote(p):
    base = os.fspath(p).rstrip("/")
    return sorted((info["name"].rstrip("/").rsplit("/", 1)[-1], info["type"] == "directory")
                  for info in _gcs().ls(base, detail=True)
                  if info["name"].rstrip("/") != base.split("://", 1)[1])
  with os.scandir(os.fspath(p)) as entries:
    return sorted((e.name, e.is_dir()) for e in entries)


def walk_files(p: str | os.PathLike) -> list[str]:
  """Every file below `p`, sorted (a bucket lists them in a few paged requests)."""
  if is_remote(p):
    return sorted(f"gs://{name}" for name in _gcs().find(os.fspath(p)))
  return sorted(os.path.join(root, name) for root, _, names in os.walk(os.fspath(p))
                for name in names)


def size(p: str | os.PathLike) -> int:
  return path(p).stat().length


def _replace_when_done(target: str, write: Any) -> None:
  """Calls `write(tmp)` for a temporary file beside local `target`, then renames it in place."""
  os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
  tmp = target + ".partial"
  try:
    write(tmp)
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, *,
              pool: concurrent.futures.Executor | None = None,
              part_bytes: int = 64 << 20) -> None:
  """Copies one file between local disk and a bucket (any direction); `dst` appears whole.

  A download larger than `part_bytes` is fetched in parts on `pool`'s threads (bounded range
  reads written at their offsets), which is what makes a multi-GB shard arrive at the bucket's
  speed rather than one stream's. Uploads are one object each (gcsfs uploads large files in
  resumable chunks and finalises them at the end).
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if is_remote(dst):
    if is_remote(src):
      _gcs().copy(src, dst)
    else:
      _gcs().put_file(src, dst)
    return
  if not is_remote(src):
    _replace_when_done(dst, lambda tmp: shutil.copyfile(src, tmp))
    return
  total = size(src)
  parts = [(a, min(a + part_bytes, total)) for a in range(0, total, part_bytes)] or [(0, 0)]

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.truncate(total)
    fd = os.open(tmp, os.O_WRONLY)
    try:
      def fetch(part: tuple[int, int]) -> None:
        data = read_ranges(src, [part])[0] if part[1] > part[0] else b""
        os.pwrite(fd, data, part[0])
      run = pool.map if pool is not None and len(parts) > 1 else map
      for _ in run(fetch, parts):
        pass
    finally:
      os.close(fd)

  _replace_when_done(dst, write)


@contextlib.contextmanager
def local_file(p: str | os.PathLike) -> Iterator[str]:
  """A local path for `p`: itself, or a temporary download of a bucket file (deleted after)."""
  if not is_remote(p):
    yield os.fspath(p)
    return
  name = os.fspath(p).rstrip("/").rsplit("/", 1)[-1]
  with tempfile.TemporaryDirectory(prefix="fstfl_") as tmp:
    local = os.path.join(tmp, name)
    copy_file(p, local)
    yield local


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

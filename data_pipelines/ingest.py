"""Parsers of the source dataset layouts: class list and, per split, (video id, label, source).

Each parser reads only annotation files and directory listings (no decoding) and returns a
`Layout`. Output splits are "train" and "validation" for the official datasets; the `folder` layout
keeps its own split folder names. Label conventions (docs/data.md#source-layouts):

  sthv1   frame folders `<id>/%05d.jpg` (under `20bn-something-something-v1/` or `--src` itself),
          `something-something-v1-{labels,train,validation}.csv`; `<id>;<template>` lines;
          classes sorted alphabetically (Python `sorted`) = label index. fps 12 (frames carry none).
  sthv2   `<id>.webm` (under `20bn-something-something-v2/` or `--src`),
          `something-something-v2-labels.json` (template -> "idx") and `-{train,validation}.json`
          lists of {id, label, template, placeholders}; class = template without "[" and "]".
  k400    official CSVs (`label,youtube_id,time_start,time_end,split[,is_cc]`, e.g. `train.csv`,
          `validate.csv`) with the clips `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere below
          `--src` (flat or class folders); without CSVs, a tree `<train|val|validation>/<class>/`.
          Classes sorted.
  ucf101  `classInd.txt` (`1 ApplyEyeMakeup`, 1-based), `trainlist0K.txt` (`Class/v_...avi 1`),
          `testlist0K.txt` (path only, class from the folder) for K = --split_id, in
          `ucfTrainTestlist/` or `--src`; videos under `UCF-101/` or `--src`.
  folder  `<src>/<split>/<class>/<video file or frame folder>`; classes = sorted class folders of
          `train` (or of the first split), other splits may not add classes.

Bad annotations raise `LayoutError` naming the file and line (or JSON entry). `--src` may be a
local path or a `gs://` URL: files are read and folders listed through `data_pipelines.storage`
(a class tree on a bucket costs one paged listing per folder, not one request per video).
"""

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable

from data_pipelines import cli
from data_pipelines import storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv")
STHV1_FPS = 12.0  # The V1 frames were extracted at 12 fps (dataset documentation).


class LayoutError(cli.UserError, ValueError):
  """Missing or malformed annotation file, unknown class, or empty split."""


@dataclasses.dataclass(frozen=True)
class Entry:
  video_id: str
  label: int
  source: str  # A video file or a frame folder.


@dataclasses.dataclass(frozen=True)
class Layout:
  class_names: list[str]
  splits: dict[str, list[Entry]]
  description: str  # Which files were read, for the build settings.
  fps: float = 0.0  # Recorded for frame folders, which carry no frame rate.


def _isdir(path: str) -> bool:
  return storage.path(path).is_dir()


def _find(src: str, names: tuple[str, ...], subdirs: tuple[str, ...] = ("",),
          what: str = "label file") -> str:
  for sub in subdirs:
    for name in names:
      path = os.path.join(src, sub, name)
      if storage.path(path).is_file():
        return path
  tried = [os.path.join(src, sub, names[0]) for sub in subdirs]
  raise LayoutError(f"missing {what} {' or '.join(tried)}"
                    + (f" (also tried {', '.join(names[1:])})" if len(names) > 1 else "") + ".")


def _root(src: str, subdir: str) -> str:
  path = os.path.join(src, subdir)
  return path if _isdir(path) else src


def _nonempty(splits: dict[str, list[Entry]], where: dict[str, str]) -> dict[str, list[Entry]]:
  for split, entries in splits.items():
    if not entries:
      raise LayoutError(f"{where[split]}: split {split!r} has no videos.")
  return splits


def _index(class_names: list[str]) -> dict[str, int]:
  return {name: i for i, name in enumerate(class_names)}


def _read_lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped line) for every non-blank line."""
  return [(n, line.strip()) for n, line in enumerate(storage.read_text(path).splitlines(), 1)
          if line.strip()]


def parse_sthv1(src: str, split_id: int = 1) -> Layout:
  del split_id
  labels_path = _find(src, ("something-something-v1-labels.csv",))
  class_names = sorted({line for _, line in _read_lines(labels_path)})
  index = _index(class_names)
  frames_root = _root(src, "20bn-something-something-v1")
  splits, where = {}, {}
  for split, name in (("train", "train"), ("validation", "validation")):
    path = where[split] = _find(src, (f"something-something-v1-{name}.csv",))
    entries = []
    for n, line in _read_lines(path):
      video_id, sep, template = line.partition(";")
      if not sep or not video_id:
        raise LayoutError(f"{path}:{n}: expected '<id>;<template>', got {line!r}.")
      if template not in index:
        raise LayoutError(f"{path}:{n}: unknown class {template!r} (not in {labels_path}).")
      entries.append(Entry(video_id, index[template], os.path.join(frames_root, video_id)))
    splits[split] = entries
  return Layout(class_names, _nonempty(splits, where), f"sthv1 csv {os.path.dirname(labels_path)}",
                fps=STHV1_FPS)


def _load_json(path: str):
  try:
    return json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise LayoutError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e


def parse_sthv2(src: str, split_id: int = 1) -> Layout:
  del split_id
  labels_path = _find(src, ("something-something-v2-labels.json",))
  labels = _load_json(labels_path)
  try:
    by_index = sorted((int(idx), name) for name, idx in labels.items())
  except (AttributeError, TypeError, ValueError) as e:
    raise LayoutError(f"{labels_path}: expected an object template -> \"index\" ({e}).") from e
  if [i for i, _ in by_index] != list(range(len(by_index))):
    raise LayoutError(f"{labels_path}: indices must be 0..{len(by_index) - 1} without gaps.")
  class_names = [name for _, name in by_index]
  index = _index(class_names)
  video_root = _root(src, "20bn-something-something-v2")
  splits, where = {}, {}
  for split in ("train", "validation"):
    path = where[split] = _find(src, (f"something-something-v2-{split}.json",))
    items = _load_json(path)
    if not isinstance(items, list):
      raise LayoutError(f"{path}: expected a JSON list of {{id, label, template, placeholders}}.")
    entries = []
    for i, item in enumerate(items):
      if not isinstance(item, dict) or "id" not in item or "template" not in item:
        raise LayoutError(f"{path}: entry {i}: expected keys 'id' and 'template', got {item!r}.")
      name = item["template"].replace("[", "").replace("]", "")
      if name not in index:
        raise LayoutError(f"{path}: entry {i} (id {item['id']}): unknown class {name!r} "
                          f"(not in {labels_path}).")
      video_id = str(item["id"])
      entries.append(Entry(video_id, index[name], os.path.join(video_root, video_id + ".webm")))
    splits[split] = entries
  return Layout(class_names, _nonempty(splits, where), f"sthv2 json {os.path.dirname(labels_path)}")


def _is_video(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def _list_class_folder(folder: str) -> list[str]:
  """Video files and frame folders (sub-directories) of a class folder, sorted."""
  return [os.path.join(folder, name) for name, is_dir in storage.scandir(folder)
          if _is_video(name) or (is_dir and not name.startswith("."))]


def _subdirs(path: str) -> list[str]:
  return [name for name, is_dir in storage.scandir(path) if is_dir and not name.startswith(".")]


def _parse_tree(src: str, split_dirs: dict[str, str], video_id: Callable[[str, str], str],
                description: str) -> Layout:
  """`<src>/<split dir>/<class>/<videos>`; split_dirs maps output split -> folder name."""
  first = "train" if "train" in split_dirs else next(iter(split_dirs))
  class_names = _subdirs(os.path.join(src, split_dirs[first]))
  index = _index(class_names)
  splits, where = {}, {}
  for split, dirname in split_dirs.items():
    root = where[split] = os.path.join(src, dirname)
    entries = []
    for cls in _subdirs(root):
      if cls not in index:
        raise LayoutError(f"{os.path.join(root, cls)}: unknown class {cls!r} (classes are the "
                          f"folders of {os.path.join(src, split_dirs[first])}).")
      entries += [Entry(video_id(cls, path), index[cls], path)
                  for path in _list_class_folder(os.path.join(root, cls))]
    splits[split] = entries
  return Layout(class_names, _nonempty(splits, where), description)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def parse_folder(src: str, split_id: int = 1) -> Layout:
  del split_id
  if not _isdir(src):
    raise LayoutError(f"{src}: not a directory (expected <src>/<split>/<class>/<videos>).")
  split_names = _subdirs(src)
  if not split_names:
    raise LayoutError(f"{src}: no split folders (expected <src>/<split>/<class>/<videos>).")
  return _parse_tree(src, {s: s for s in split_names},
                     lambda cls, path: f"{cls}/{_stem(path)}", f"folder {src}")


_K400_CSVS = {
  "train": ("train.csv", "kinetics_train.csv", "kinetics_400_train.csv", "kinetics400_train.csv"),
  "validation": ("validate.csv", "val.csv", "validation.csv", "kinetics_val.csv",
                 "kinetics_400_val.csv", "kinetics400_val.csv"),
}
_K400_TREE = {"train": ("train",), "validation": ("val", "validation", "validate")}
_K400_HEADER = ["label", "youtube_id", "time_start", "time_end"]


def _k400_clip_name(youtube_id: str, start: str, end: str) -> str:
  return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def parse_k400(src: str, split_id: int = 1) -> Layout:
  del split_id
  subdirs = ("", "annotations", "kinetics400")
  try:
    csv_paths = {s: _find(src, names, subdirs) for s, names in _K400_CSVS.items()}
  except LayoutError as csv_error:
    tree = {}
    for split, names in _K400_TREE.items():
      found = [n for n in names if _isdir(os.path.join(src, n))]
      if not found:
        raise LayoutError(f"{src}: neither the official CSVs nor a "
                          f"<{'|'.join(names)}>/<class>/ tree ({csv_error})") from csv_error
      tree[split] = found[0]
    return _parse_tree(src, tree, lambda cls, path: _stem(path), f"k400 tree {src}")
  clips = {}
  for path in storage.walk_files(src):
    if _is_video(os.path.basename(path)):
      clips.setdefault(_stem(path), path)
  rows, class_names = {}, None
  for split, path in csv_paths.items():
    with io.StringIO(storage.read_text(path), newline="") as f:
      reader = csv.reader(f)
      header = next(reader, [])
      if header[:4] != _K400_HEADER:
        raise LayoutError(f"{path}:1: expected header starting {','.join(_K400_HEADER)}, "
                          f"got {','.join(header)!r}.")
      rows[split] = [(n, row) for n, row in enumerate(reader, 2) if row]
    if class_names is None:
      class_names = sorted({row[0] for _, row in rows[split]})
  index = _index(class_names)
  splits = {}
  for split, path in csv_paths.items():
    entries = []
    for n, row in rows[split]:
      if len(row) < 4:
        raise LayoutError(f"{path}:{n}: expected label,youtube_id,time_start,time_end, got {row}.")
      if row[0] not in index:
        raise LayoutError(f"{path}:{n}: unknown class {row[0]!r} (not in "
                          f"{csv_paths['train']}).")
      try:
        clip = _k400_clip_name(*row[1:4])
      except ValueError as e:
        raise LayoutError(f"{path}:{n}: bad time_start/time_end in {row}.") from e
      entries.append(Entry(clip, index[row[0]], clips.get(clip, os.path.join(src, clip + ".mp4"))))
    splits[split] = entries
  return Layout(class_names, _nonempty(splits, csv_paths), f"k400 csv {csv_paths['train']}")


def parse_ucf101(src: str, split_id: int = 1) -> Layout:
  if split_id not in (1, 2, 3):
    raise LayoutError(f"UCF-101 has splits 1, 2, 3; got --split_id {split_id}.")
  subdirs = ("ucfTrainTestlist", "")
  class_path = _find(src, ("classInd.txt",), subdirs)
  numbered = []
  for n, line in _read_lines(class_path):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
      raise LayoutError(f"{class_path}:{n}: expected '<index> <ClassName>', got {line!r}.")
    numbered.append((int(parts[0]), parts[1], n))
  numbered.sort()
  for i, (number, _, n) in enumerate(numbered, 1):
    if number != i:
      raise LayoutError(f"{class_path}:{n}: class indices must run 1..{len(numbered)}, "
                        f"found {number} where {i} was expected.")
  class_names = [name for _, name, _ in numbered]
  index = _index(class_names)
  video_root = _root(src, "UCF-101")
  splits, where = {}, {}
  for split, name in (("train", "trainlist"), ("validation", "testlist")):
    path = where[split] = _find(src, (f"{name}{split_id:02d}.txt",), subdirs)
    entries = []
    for n, line in _read_lines(path):
      rel, *rest = line.split()
      cls = rel.replace("\\", "/").split("/")[0]
      if cls not in index:
        raise LayoutError(f"{path}:{n}: unknown class {cls!r} (not in {class_path}).")
      if rest:  # trainlist: 1-based label that must agree with the folder.
        if not rest[0].isdigit() or int(rest[0]) != index[cls] + 1:
          raise LayoutError(f"{path}:{n}: label {rest[0]!r} disagrees with class folder {cls!r} "
                            f"(index {index[cls] + 1} in {class_path}).")
      entries.append(Entry(_stem(rel), index[cls], os.path.join(video_root, rel)))
    splits[split] = entries
  return Layout(class_names, _nonempty(splits, where),
                f"ucf101 split {split_id} {os.path.dirname(class_path)}")


PARSERS = {
  "sthv1": parse_sthv1,
  "sthv2": parse_sthv2,
  "k400": parse_k400,
  "ucf101": parse_ucf101,
  "folder": parse_folder,
}


def parse(dataset: str, src: str, split_id: int = 1) -> Layout:
  if dataset not in PARSERS:
    raise LayoutError(f"unknown dataset {dataset!r}; expected one of {sorted(PARSERS)}.")
  return PARSERS[dataset](src, split_id)

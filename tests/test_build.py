"""Ingest of every source layout on tiny fabricated data; failures, resume, bad annotations."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import simplejpeg

from data_pipelines import build
from data_pipelines import ingest
from data_pipelines import video_decode
from data_pipelines.records import reading
from data_pipelines.records import schema
import video_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _by_id(data_dir: str, split: str) -> dict[str, dict]:
  return {r["video_id"]: r for r in reading.open_split(data_dir, split)}


def _jpeg_shape(data: bytes) -> tuple[int, int]:
  return simplejpeg.decode_jpeg(data).shape[:2]


def _write_lines(path: str, lines: list[str]) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))
  return path


# --- folder layout (h264 .mp4), a corrupt file, a real clip, parallel workers -------------------


@pytest.fixture(scope="module")
def folder_build(tmp_path_factory):
  src = str(tmp_path_factory.mktemp("folder_src"))
  for split, per_class in (("train", 2), ("validation", 1)):
    for c, cls in enumerate(("zebra", "ant")):
      for k in range(per_class):
        video_fixtures.write_video(f"{src}/{split}/{cls}/clip{k}.mp4", num_frames=4 + k + c,
                                   height=48, width=64, seed=k)
  with open(f"{src}/train/ant/broken.mp4", "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  os.symlink(video_fixtures.sample_clip(), f"{src}/train/zebra/carphone.mp4")
  out = str(tmp_path_factory.mktemp("folder_out"))
  result = build.build("folder", src, out, short_side=32, workers=2, num_shards=2)
  return src, out, result


def test_folder_labels_ids_frames_and_cap(folder_build):
  _, out, result = folder_build
  assert result.class_names == ["ant", "zebra"]  # Sorted folder names.
  assert result.split_sizes == {"train": 5, "validation": 2}
  train = _by_id(out, "train")
  assert sorted(train) == ["ant/clip0", "ant/clip1", "zebra/carphone", "zebra/clip0",
                           "zebra/clip1"]
  for vid, want_frames in (("ant/clip0", 5), ("ant/clip1", 6), ("zebra/clip0", 4)):
    rec = train[vid]
    assert rec["label"] == (vid.startswith("zebra"))
    assert rec["num_frames"] == len(rec["frames"]) == want_frames
    # 48x64 capped to short side 32: 32 x round(64 * 32 / 48) = 32 x 43.
    assert (rec["height"], rec["width"]) == (32, 43)
    assert all(_jpeg_shape(f) == (32, 43) for f in rec["frames"])
    assert rec["fps"] == pytest.approx(10.0)
  assert _by_id(out, "validation")["zebra/clip0"]["label"] == 1


def test_real_sample_clip_decodes_with_its_frame_count_and_size(folder_build):
  _, out, _ = folder_build
  with av.open(video_fixtures.sample_clip()) as container:
    stream = container.streams.video[0]
    want_frames, want_hw = stream.frames, (stream.height, stream.width)
  assert want_hw == (144, 176) and want_frames == 120
  rec = _by_id(out, "train")["zebra/carphone"]
  assert rec["num_frames"] == want_frames
  assert (rec["height"], rec["width"]) == (32, round(176 * 32 / 144))
  assert _jpeg_shape(rec["frames"][-1]) == (32, 39)
  assert rec["fps"] == pytest.approx(30000 / 1001)


def test_corrupt_video_is_skipped_and_listed(folder_build):
  src, out, result = folder_build
  assert [f["video_id"] for f in result.failures] == ["ant/broken"]
  with open(os.path.join(out, build.FAILURES_FILE)) as f:
    listed = [json.loads(line) for line in f]
  assert listed == result.failures
  assert listed[0]["source"] == f"{src}/train/ant/broken.mp4" and listed[0]["reason"]
  assert reading.read_info(out).settings["skipped"] == 1


def test_decoded_pixels_match_the_source(tmp_path):
  path = video_fixtures.write_video(str(tmp_path / "a.mp4"), num_frames=3, height=48, width=64)
  rec = video_decode.decode_video(path, short_side=256, quality=95)
  # The best any decoder can return: the source frames after the encoder's yuv420p conversion.
  want = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
                   .to_ndarray(format="rgb24") for f in video_fixtures.clip(3, 48, 64)])
  got = np.stack([simplejpeg.decode_jpeg(f) for f in rec["frames"]])
  assert (rec["height"], rec["width"], rec["num_frames"]) == (48, 64, 3)
  err = np.abs(got.astype(int) - want).mean((1, 2, 3))
  neighbour = np.abs(got[1:].astype(int) - want[:-1]).mean((1, 2, 3))
  assert err.max() < 3 and neighbour.min() > 4 * err.max(), (err, neighbour)


# --- official layouts ---------------------------------------------------------------------------


def test_ucf101_split_files_and_avi(tmp_path):
  src = str(tmp_path)
  lists = f"{src}/ucfTrainTestlist"
  _write_lines(f"{lists}/classInd.txt", ["1 ApplyEyeMakeup", "2 Biking", "3 YoYo"])
  names = {c: [f"{c}/v_{c}_g0{g}_c01.avi" for g in (1, 2)] for c in ("ApplyEyeMakeup", "Biking",
                                                                       "YoYo")}
  for paths in names.values():
    for p in paths:
      video_fixtures.write_video(f"{src}/UCF-101/{p}", num_frames=3, height=32, width=48)
  # Split 1 trains on group 1; split 2 trains on group 2 (real lists hold 1-based labels).
  for split_id, (train_g, test_g) in ((1, (0, 1)), (2, (1, 0))):
    _write_lines(f"{lists}/trainlist0{split_id}.txt",
                 [f"{paths[train_g]} {i + 1}" for i, paths in enumerate(names.values())])
    _write_lines(f"{lists}/testlist0{split_id}.txt", [paths[test_g] for paths in names.values()])
  out = str(tmp_path / "out")
  result = build.build("ucf101", src, out, split_id=2, workers=0)
  assert result.class_names == ["ApplyEyeMakeup", "Biking", "YoYo"]
  train, val = _by_id(out, "train"), _by_id(out, "validation")
  assert {v: r["label"] for v, r in train.items()} == {
    "v_ApplyEyeMakeup_g02_c01": 0, "v_Biking_g02_c01": 1, "v_YoYo_g02_c01": 2}
  assert {v: r["label"] for v, r in val.items()} == {
    "v_ApplyEyeMakeup_g01_c01": 0, "v_Biking_g01_c01": 1, "v_YoYo_g01_c01": 2}
  assert all(r["num_frames"] == 3 and (r["height"], r["width"]) == (32, 48)
             for r in train.values())
  assert reading.read_info(out).settings["split_id"] == 2


def test_k400_csv_with_flat_and_class_folders(tmp_path):
  src = str(tmp_path)
  header = "label,youtube_id,time_start,time_end,split,is_cc"
  _write_lines(f"{src}/train.csv", [header, "riding a bike,abc,10,20,train,0",
                                    "abseiling,xyz,0,10,train,0", "abseiling,gone,5,15,train,0"])
  _write_lines(f"{src}/validate.csv", [header, "riding a bike,val1,30,40,val,0"])
  video_fixtures.write_video(f"{src}/train/riding a bike/abc_000010_000020.mp4", num_frames=3)
  video_fixtures.write_video(f"{src}/train/abseiling/xyz_000000_000010.mp4", num_frames=4)
  video_fixtures.write_video(f"{src}/val/val1_000030_000040.mp4", num_frames=5, height=32,
                             width=32)
  out = str(tmp_path / "out")
  result = build.build("k400", src, out, workers=0)
  assert result.class_names == ["abseiling", "riding a bike"]
  train = _by_id(out, "train")
  assert {v: (r["label"], r["num_frames"]) for v, r in train.items()} == {
    "abc_000010_000020": (1, 3), "xyz_000000_000010": (0, 4)}
  assert [(f["video_id"], f["reason"]) for f in result.failures] == [
    ("gone_000005_000015", "not found")]
  val = _by_id(out, "validation")["val1_000030_000040"]
  assert (val["label"], val["num_frames"], val["height"], val["width"]) == (1, 5, 32, 32)


def test_k400_class_tree_without_csv(tmp_path):
  src = str(tmp_path)
  video_fixtures.write_video(f"{src}/train/dancing/aaa_000001_000011.mp4", num_frames=3)
  video_fixtures.write_video(f"{src}/train/archery/bbb_000002_000012.mp4", num_frames=3)
  video_fixtures.write_video(f"{src}/val/dancing/ccc_000003_000013.mp4", num_frames=3)
  layout = ingest.parse("k400", src)
  assert layout.class_names == ["archery", "dancing"]
  assert [(e.video_id, e.label) for e in layout.splits["validation"]] == [
    ("ccc_000003_000013", 1)]
  assert [(e.video_id, e.label) for e in layout.splits["train"]] == [
    ("bbb_000002_000012", 0), ("aaa_000001_000011", 1)]


def test_sthv2_json_and_webm(tmp_path):
  src = str(tmp_path)
  labels = {"Holding something": "0", "Pushing something from left to right": "1",
            "Putting something on a surface": "2"}
  with open(f"{src}/something-something-v2-labels.json", "w") as f:
    json.dump(labels, f)
  train = [dict(id="11", label="pushing a cup from left to right",
                template="Pushing [something] from left to right", placeholders=["a cup"]),
           dict(id="12", label="holding a pen", template="Holding [something]",
                placeholders=["a pen"])]
  val = [dict(id="21", label="putting a box on a surface",
              template="Putting [something] on a surface", placeholders=["a box"])]
  for name, items in (("train", train), ("validation", val)):
    with open(f"{src}/something-something-v2-{name}.json", "w") as f:
      json.dump(items, f)
  for vid, frames in (("11", 3), ("12", 4), ("21", 5)):
    video_fixtures.write_video(f"{src}/20bn-something-something-v2/{vid}.webm",
                               num_frames=frames, height=40, width=64)
  out = str(tmp_path / "out")
  result = build.build("sthv2", src, out, short_side=20, workers=0)
  assert result.class_names == list(labels)
  got = {**_by_id(out, "train"), **_by_id(out, "validation")}
  assert {v: (r["label"], r["num_frames"]) for v, r in got.items()} == {
    "11": (1, 3), "12": (0, 4), "21": (2, 5)}
  assert all((r["height"], r["width"]) == (20, 32) for r in got.values())


def test_sthv1_frame_folders_sorted_classes_and_kept_bytes(tmp_path):
  src = str(tmp_path)
  templates = ["Turning the camera left while filming something", "Dropping something",
               "Pushing something from right to left"]
  _write_lines(f"{src}/something-something-v1-labels.csv", templates)
  _write_lines(f"{src}/something-something-v1-train.csv",
               ["100;Dropping something", "101;Turning the camera left while filming something"])
  _write_lines(f"{src}/something-something-v1-validation.csv",
               ["200;Pushing something from right to left"])
  root = f"{src}/20bn-something-something-v1"
  small = video_fixtures.write_jpeg_folder(f"{root}/100", num_frames=5, height=40, width=56)
  video_fixtures.write_jpeg_folder(f"{root}/101", num_frames=4, height=80, width=96)
  video_fixtures.write_jpeg_folder(f"{root}/200", num_frames=3, height=40, width=56)
  out = str(tmp_path / "out")
  result = build.build("sthv1", src, out, short_side=48, workers=0)
  assert result.class_names == sorted(templates)
  train = _by_id(out, "train")
  assert train["100"]["label"] == 0 and train["101"]["label"] == 2
  assert train["100"]["frames"] == small  # Under the cap: original JPEG bytes, no re-encode.
  assert train["100"]["fps"] == ingest.STHV1_FPS
  big = train["101"]
  assert (big["num_frames"], big["height"], big["width"]) == (4, 48, 58)
  assert _jpeg_shape(big["frames"][0]) == (48, 58)
  assert _by_id(out, "validation")["200"]["label"] == 1


# --- resume and interruption --------------------------------------------------------------------


@pytest.fixture()
def small_folder(tmp_path):
  src = str(tmp_path / "src")
  for split, count in (("train", 5), ("validation", 1)):
    for k in range(count):
      video_fixtures.write_video(f"{src}/{split}/c{k % 2}/v{k}.mp4", num_frames=3, height=32,
                                 width=32, seed=k)
  return src, str(tmp_path / "out")


def _shard_stats(out: str) -> dict[str, tuple[int, int]]:
  return {n: (os.stat(os.path.join(out, n)).st_ino, os.stat(os.path.join(out, n)).st_mtime_ns)
          for n in os.listdir(out) if schema.parse_shard_name(n)}


def test_resume_keeps_finished_shards_and_replaces_stale_partial(small_folder):
  src, out = small_folder
  first = build.build("folder", src, out, workers=0, num_shards=3)
  assert first.shards_written == 4
  want = list(reading.open_split(out, "train"))
  before = _shard_stats(out)
  lost = schema.shard_name("train", 1, 3)
  os.remove(os.path.join(out, lost))
  os.makedirs(os.path.join(out, schema.PARTIAL_DIR), exist_ok=True)
  with open(os.path.join(out, schema.PARTIAL_DIR, lost), "wb") as f:
    f.write(b"truncated garbage")
  second = build.build("folder", src, out, workers=0, num_shards=3)
  assert second.shards_written == 1
  after = _shard_stats(out)
  assert {n: s for n, s in after.items() if n != lost} == {
    n: s for n, s in before.items() if n != lost}
  assert list(reading.open_split(out, "train")) == want
  assert not os.path.exists(os.path.join(out, schema.PARTIAL_DIR))


def test_interrupted_build_exposes_only_finished_shards(small_folder, monkeypatch):
  src, out = small_folder
  calls = []
  real = video_decode.make_record

  def dies_on_fourth(task):
    calls.append(task.video_id)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return real(task)

  monkeypatch.setattr(video_decode, "make_record", dies_on_fourth)
  with pytest.raises(KeyboardInterrupt):
    build.build("folder", src, out, workers=0, num_shards=2)  # Train shards: 2 + 3 videos.
  assert sorted(_shard_stats(out)) == [schema.shard_name("train", 0, 2)]
  with pytest.raises(ValueError, match=r"incomplete, missing \['train\.array_record-00001"):
    reading.split_shards(out, "train")
  monkeypatch.setattr(video_decode, "make_record", real)
  result = build.build("folder", src, out, workers=0, num_shards=2)
  assert result.shards_written == 2 and result.split_sizes == {"train": 5, "validation": 1}
  assert sorted(r["video_id"] for r in reading.open_split(out, "train")) == [
    "c0/v0", "c0/v2", "c0/v4", "c1/v1", "c1/v3"]


def test_rerun_with_other_settings_is_refused(small_folder):
  src, out = small_folder
  build.build("folder", src, out, workers=0, num_shards=1)
  with pytest.raises(ValueError, match=r"different \['short_side'\]"):
    build.build("folder", src, out, workers=0, num_shards=1, short_side=16)


# --- annotation errors --------------------------------------------------------------------------


def test_missing_label_file_is_named(tmp_path):
  with pytest.raises(ingest.LayoutError,
                     match=r"missing label file .*something-something-v1-labels\.csv"):
    ingest.parse("sthv1", str(tmp_path))
  proc = subprocess.run(
    [sys.executable, "-m", "data_pipelines.build", "--dataset", "ucf101", "--src", str(tmp_path),
     "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 1
  assert "error: missing label file" in proc.stderr and "classInd.txt" in proc.stderr


def test_unknown_class_names_file_and_line(tmp_path):
  src = str(tmp_path)
  _write_lines(f"{src}/something-something-v1-labels.csv", ["Dropping something"])
  train = _write_lines(f"{src}/something-something-v1-train.csv",
                       ["1;Dropping something", "2;Juggling something"])
  _write_lines(f"{src}/something-something-v1-validation.csv", ["3;Dropping something"])
  with pytest.raises(ingest.LayoutError,
                     match=rf"{train}:2: unknown class 'Juggling something'"):
    ingest.parse("sthv1", src)

  lists = f"{src}/ucf"
  _write_lines(f"{lists}/classInd.txt", ["1 Biking", "2 YoYo"])
  _write_lines(f"{lists}/trainlist01.txt", ["Biking/v_Biking_g01_c01.avi 1"])
  test = _write_lines(f"{lists}/testlist01.txt", ["YoYo/v_YoYo_g01_c01.avi", "Rowing/v_R.avi"])
  with pytest.raises(ingest.LayoutError, match=rf"{test}:2: unknown class 'Rowing'"):
    ingest.parse("ucf101", lists)
  bad = _write_lines(f"{lists}/trainlist01.txt", ["Biking/v_Biking_g01_c01.avi 2"])
  with pytest.raises(ingest.LayoutError, match=rf"{bad}:1: label '2' disagrees with class"):
    ingest.parse("ucf101", lists)

  header = "label,youtube_id,time_start,time_end,split"
  _write_lines(f"{src}/k/train.csv", [header, "archery,a,0,10,train"])
  val = _write_lines(f"{src}/k/validate.csv", [header, "archery,b,0,10,val", "bowling,c,0,10,val"])
  with pytest.raises(ingest.LayoutError, match=rf"{val}:3: unknown class 'bowling'"):
    ingest.parse("k400", f"{src}/k")


def test_empty_split_and_unknown_class_folder(tmp_path):
  src = str(tmp_path)
  video_fixtures.write_video(f"{src}/train/a/x.mp4", num_frames=2, height=16, width=16)
  os.makedirs(f"{src}/validation/a")
  with pytest.raises(ingest.LayoutError, match=rf"{src}/validation: split 'validation' has no "):
    ingest.parse("folder", src)
  shutil.copy(f"{src}/train/a/x.mp4", f"{src}/validation/a/y.mp4")
  os.makedirs(f"{src}/validation/b")
  with pytest.raises(ingest.LayoutError, match=rf"{src}/validation/b: unknown class 'b'"):
    ingest.parse("folder", src)


# --- decode workers die with the build ----------------------------------------------------------


def _children(pid: int) -> set[int]:
  """Pids of the live (not zombie) processes whose parent is `pid`, from /proc."""
  out = set()
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
      continue  # Not a process, or it just ended.
    if fields[1] == str(pid) and fields[0] != "Z":
      out.add(int(entry))
  return out


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_build_leaves_no_decode_workers(tmp_path):
  src = tmp_path / "src"
  for split, count in (("train", 24), ("validation", 1)):
    os.makedirs(src / split / "bikes")
    for k in range(count):  # 250 frames each: the workers are busy when the build is killed.
      os.symlink(video_fixtures.sample_clip("bikes.mp4"), src / split / "bikes" / f"{k}.mp4")
  build_proc = subprocess.Popen(
    [sys.executable, "-m", "data_pipelines.build", "--dataset", "folder", "--src", str(src),
     "--out", str(tmp_path / "out"), "--workers", "2"],
    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  workers = set()
  deadline = time.monotonic() + 120
  while len(workers) < 2 and build_proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
    # Spawned workers run `multiprocessing.spawn`; the resource tracker is a child too.
    workers = {p for p in _children(build_proc.pid)
               if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()}
  assert len(workers) == 2 and build_proc.poll() is None, "the build ended before the check"
  build_proc.kill()  # SIGKILL: no cleanup code runs in the build process.
  build_proc.wait()
  deadline = time.monotonic() + 30
  while any(_alive(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  orphans = [p for p in workers if _alive(p)]
  for p in orphans:  # Do not leave them running if the test fails.
    os.kill(p, signal.SIGKILL)
  assert not orphans, f"decode workers {orphans} outlived the killed build"

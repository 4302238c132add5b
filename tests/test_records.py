"""Record shards: round trip (ours and TFDS's reader), validation errors, atomic shard writes."""

import json
import os
import pickle
import re
import shutil
import sys

from array_record.python import array_record_module
import numpy as np
import pytest
import simplejpeg
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from data_pipelines import reshard
from data_pipelines.records import reading
from data_pipelines.records import schema
from data_pipelines.records import writing

CLASSES = ["catch", "throw", "wave"]


def _record(i: int, num_frames: int = 3) -> dict:
  rng = np.random.default_rng(i)
  frames = [simplejpeg.encode_jpeg(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), 90)
            for _ in range(num_frames)]
  return dict(frames=frames, label=i % 3, video_id=f"vid{i:03d}", fps=12.5, height=12, width=20,
              num_frames=num_frames)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("records"))
  train = [_record(i, num_frames=2 + i % 4) for i in range(11)]
  val = [_record(100 + i) for i in range(4)]
  assert writing.write_split(out, "train", train, num_shards=3) == [3, 4, 4]
  assert writing.write_split(out, "validation", val, num_shards=1) == [4]
  sizes = writing.write_metadata(out, CLASSES, ["train", "validation"], dict(short_side=256))
  assert sizes == {"train": 11, "validation": 4}
  return out, train, val


def test_round_trip_in_write_order(data_dir):
  out, train, val = data_dir
  source = reading.open_split(out, "train")
  assert len(source) == 11
  assert [source[i] for i in range(len(source))] == train
  assert list(reading.open_split(out, "validation")) == val
  assert source[-1] == train[-1]
  with pytest.raises(IndexError):
    source[11]


def test_shard_files_and_metadata(data_dir):
  out, _, _ = data_dir
  names = sorted(n for n in os.listdir(out) if schema.parse_shard_name(n))
  assert names == ["train.array_record-00000-of-00003", "train.array_record-00001-of-00003",
                   "train.array_record-00002-of-00003", "validation.array_record-00000-of-00001"]
  index = reading.read_index(os.path.join(out, names[1]))
  assert index["video_id"] == ["vid003", "vid004", "vid005", "vid006"]
  assert index["num_frames"] == [5, 2, 3, 4] and index["label"] == [0, 1, 2, 0]
  assert not os.path.exists(os.path.join(out, schema.PARTIAL_DIR))
  info = reading.read_info(out)
  assert info.class_names == CLASSES and info.num_classes == 3
  assert info.split_sizes == {"train": 11, "validation": 4}
  assert info.settings["short_side"] == 256 and info.settings["split_sizes"]["train"] == 11
  assert info.settings["record_layout"] == schema.LAYOUT


def test_tfds_data_source_reads_the_same_frames(data_dir):
  out, train, _ = data_dir
  builder = tfds.builder_from_directory(out)
  assert builder.info.features["label"].names == CLASSES
  frames_per_video = [r["num_frames"] for r in train]
  assert builder.info.splits["train"].shard_lengths == [sum(frames_per_video[a:b]) for a, b in
                                                        ((0, 3), (3, 7), (7, 11))]
  source = builder.as_data_source("train")
  assert len(source) == sum(frames_per_video)
  by_id = {r["video_id"]: r for r in train}
  seen = {}
  for i in range(len(source)):
    got = source[i]
    want = by_id[got["video_id"].decode()]
    assert got["jpeg"] == want["frames"][got["frame"]]
    assert (got["label"], got["fps"], got["num_frames"]) == (want["label"], 12.5,
                                                              want["num_frames"])
    assert (got["height"], got["width"]) == (12, 20)
    seen.setdefault(want["video_id"], []).append(int(got["frame"]))
  assert seen == {r["video_id"]: list(range(r["num_frames"])) for r in train}  # In order.
  assert "tensorflow" not in sys.modules  # Read without TensorFlow.


def test_source_pickles_for_worker_processes(data_dir):
  out, train, _ = data_dir
  source = reading.open_split(out, "train")
  source[0]  # Opens the files; the pickle must not carry the open readers.
  clone = pickle.loads(pickle.dumps(source))
  assert clone[7] == train[7] and len(clone) == 11


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_damaged_shard_names_the_file_and_record_and_others_still_read(data_dir, tmp_path,
                                                                        damage):
  out, train, _ = data_dir
  copy = str(tmp_path / "copy")
  shutil.copytree(out, copy)
  name = schema.shard_name("train", 1, 3)  # Records 3-6 of the split.
  with open(os.path.join(copy, name), "rb") as f:
    data = bytearray(f.read())
  if damage == "truncated":  # The footer is gone: the file does not open at all.
    data = data[:len(data) // 2]
  else:  # Bytes inside the first frame record (records start after a 64-byte header).
    data[200:216] = bytes(b ^ 0x5A for b in data[200:216])
  with open(os.path.join(copy, name), "wb") as f:
    f.write(bytes(data))
  source = reading.open_split(copy, "train")
  bad = []
  for i in range(3, 7):
    try:
      assert source[i] == train[i]
    except ValueError as e:
      assert re.search(rf"{name} record \d+: cannot read it", str(e)) and "damaged" in str(e)
      bad.append(i)
  assert bad == ([3, 4, 5, 6] if damage == "truncated" else [3])
  # The other shards still read (one reader per shard).
  assert [source[i] for i in (0, 1, 2, 7, 8, 9, 10)] == [train[i] for i in (0, 1, 2, 7, 8, 9, 10)]


def _raw_shard(out: str, videos: list[dict], serialized: list[bytes]) -> None:
  """A one-shard train split holding `serialized` frame records, indexed as `videos`."""
  path = os.path.join(out, schema.shard_name("train", 0, 1))
  writer = array_record_module.ArrayRecordWriter(path, writing.WRITER_OPTIONS)
  for data in serialized:
    writer.write(data)
  writer.close()
  with open(schema.index_path(path), "w") as f:
    json.dump({c: [v[c] for v in videos] for c in schema.INDEX_COLUMNS}, f)


def _frame_record(video: dict, t: int, **changes) -> bytes:
  example = {k: v for k, v in video.items() if k != "frames"}
  example.update(jpeg=video["frames"][t], frame=t)
  return schema.features().serialize_example(dict(example, **changes))


def test_corrupt_frames_name_shard_record_and_key(tmp_path):
  out = str(tmp_path)
  good, bad = _record(0, num_frames=2), _record(1, num_frames=3)
  _raw_shard(out, [good, bad], [_frame_record(good, 0), _frame_record(good, 1),
                                _frame_record(bad, 0, jpeg=bad["frames"][0][:50]),
                                _frame_record(bad, 2), b"not a proto \xff"])
  writing.write_metadata(out, CLASSES, ["train"], {})
  source = reading.open_split(out, "train")
  assert source[0] == good
  frames = source[1]["frames"]
  with pytest.raises(ValueError, match=r"train\.array_record-00000-of-00001 record 2: key 'jpeg' "
                                       r"is not a complete JPEG"):
    frames[0]
  with pytest.raises(ValueError, match=r"record 3: holds \(video_id, frame\) .* expected b'vid001'"
                                       r", 1 from .*videos\.json video 1; the shard and its index "
                                       r"disagree"):
    frames[1]
  with pytest.raises(ValueError, match=r"00000-of-00001 record 4: not a serialized"):
    frames[2]


def test_index_errors_name_the_index_file_and_video(tmp_path):
  out = str(tmp_path)
  video = _record(0, num_frames=1)
  _raw_shard(out, [video, dict(video, label=5)], [_frame_record(video, 0)] * 2)
  writing.write_metadata(out, CLASSES, ["train"], {})
  with pytest.raises(ValueError, match=r"00000-of-00001\.videos\.json video 1: key 'label' is 5, "
                                       r"expected 0\.\.2"):
    reading.open_split(out, "train")
  with pytest.raises(ValueError, match=r"here: key 'num_frames' is 4 but 'frames' holds 3"):
    schema.validate_record(dict(_record(0), num_frames=4), "here")
  with pytest.raises(ValueError, match=r"here: key 'video_id' must be a non-empty str"):
    schema.validate_record(dict(_record(0), video_id=""), "here")


def _v1_dir(out: str, splits: dict[str, list[dict]]) -> None:
  """A data dir as the builder wrote it before frame records: one tf.train.Example per video."""
  os.makedirs(out)
  for split, videos in splits.items():
    for shard, block in enumerate(writing.shard_ranges(len(videos), 2)):
      writer = array_record_module.ArrayRecordWriter(
        os.path.join(out, schema.shard_name(split, shard, 2)), "group_size:1")
      for i in block:
        example = tf_example_pb2.Example()
        for key, kind in reshard.V1_KINDS.items():
          value = videos[i][key]
          values = value if key == "frames" else [value.encode() if key == "video_id" else value]
          getattr(example.features.feature[key], kind).value.extend(values)
        writer.write(example.SerializeToString())
      writer.close()
  with open(os.path.join(out, "dataset_info.json"), "w") as f:
    json.dump(dict(name="old"), f)
  with open(os.path.join(out, schema.SETTINGS_FILE), "w") as f:
    json.dump(dict(class_names=CLASSES, split_sizes={s: len(v) for s, v in splits.items()},
                   short_side=256), f)
  with open(os.path.join(out, "failures.jsonl"), "w") as f:
    f.write('{"video_id": "lost"}\n')


def test_old_layout_is_one_clear_error_and_converts_to_the_same_clips(tmp_path):
  train = [_record(i, num_frames=2 + i % 4) for i in range(5)]
  val = [_record(50 + i) for i in range(3)]
  old, new = str(tmp_path / "old"), str(tmp_path / "new")
  _v1_dir(old, dict(train=train, validation=val))
  with pytest.raises(schema.LayoutError) as err:
    reading.open_split(old, "train")
  message = str(err.value)
  assert "\n" not in message and "record layout 1 (one record per video)" in message
  assert f"fstfl-reshard --src {old} --out NEW_DIR" in message
  assert reshard.main(["--src", old, "--out", new]) == 0
  assert reshard.reshard(old, new) == {"train": 5, "validation": 3}  # Rerun: no-op.
  info = reading.read_info(new)
  assert info.class_names == CLASSES and info.settings["short_side"] == 256
  with open(os.path.join(new, "failures.jsonl")) as f:
    assert f.read() == '{"video_id": "lost"}\n'
  # Train in the seeded shuffled order a build writes; validation as it was.
  order = np.random.default_rng(0).permutation(len(train))
  for split, want in (("train", [train[i] for i in order]), ("validation", val)):
    source = reading.open_split(new, split)
    assert list(source) == want
    for got, video in zip(source, want):  # The decoded clips are the same pixels.
      np.testing.assert_array_equal(
        np.stack([simplejpeg.decode_jpeg(f) for f in got["frames"]]),
        np.stack([simplejpeg.decode_jpeg(f) for f in video["frames"]]))


def test_failed_shard_write_leaves_nothing_that_looks_finished(tmp_path):
  out = str(tmp_path)
  bad = {k: v for k, v in _record(1).items() if k != "label"}
  with pytest.raises(ValueError, match=r"train\.array_record-00000-of-00002 record 1: missing "
                                       r"key 'label'"):
    with writing.ShardWriter(out, "train", 0, 2) as writer:
      writer.write(_record(0))
      writer.write(bad)
  assert os.listdir(out) == []
  assert writing.finished_shards(out, "train", 2) == set()


def test_stale_partial_is_replaced_and_incomplete_split_rejected(tmp_path):
  out = str(tmp_path)
  os.makedirs(os.path.join(out, schema.PARTIAL_DIR))
  stale = os.path.join(out, schema.PARTIAL_DIR, schema.shard_name("train", 1, 2))
  with open(stale, "wb") as f:
    f.write(b"half a shard")
  with pytest.raises(ValueError, match=r"missing \['train\.array_record-00000-of-00002"):
    with writing.ShardWriter(out, "train", 1, 2) as writer:
      writer.write(_record(0))
    reading.split_shards(out, "train")
  shard = os.path.join(out, schema.shard_name("train", 1, 2))
  assert len(np.load(schema.offsets_path(shard))) == 3  # One row per frame record.
  assert reading.read_index(shard)["video_id"] == ["vid000"]
  assert not os.path.exists(stale)


def test_shard_ranges_are_contiguous_and_balanced():
  ranges = writing.shard_ranges(10, 4)
  assert [list(r) for r in ranges] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
  with pytest.raises(ValueError, match="num_shards"):
    writing.shard_ranges(3, 0)

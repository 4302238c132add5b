"""Record shards: round trip (ours and TFDS's reader), validation errors, atomic shard writes."""

import os
import pickle
import shutil
import sys

from array_record.python import array_record_module
import numpy as np
import pytest
import simplejpeg
import tensorflow_datasets as tfds

from data_pipelines import records

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
  assert records.write_split(out, "train", train, num_shards=3) == [3, 4, 4]
  assert records.write_split(out, "validation", val, num_shards=1) == [4]
  sizes = records.write_metadata(out, CLASSES, ["train", "validation"], dict(short_side=256))
  assert sizes == {"train": 11, "validation": 4}
  return out, train, val


def test_round_trip_in_write_order(data_dir):
  out, train, val = data_dir
  source = records.open_split(out, "train")
  assert len(source) == 11
  assert [source[i] for i in range(len(source))] == train
  assert list(records.open_split(out, "validation")) == val
  assert source[-1] == train[-1]
  with pytest.raises(IndexError):
    source[11]


def test_shard_files_and_metadata(data_dir):
  out, _, _ = data_dir
  names = sorted(n for n in os.listdir(out) if ".array_record-" in n)
  assert names == ["train.array_record-00000-of-00003", "train.array_record-00001-of-00003",
                   "train.array_record-00002-of-00003", "validation.array_record-00000-of-00001"]
  assert not os.path.exists(os.path.join(out, records.PARTIAL_DIR))
  info = records.read_info(out)
  assert info.class_names == CLASSES and info.num_classes == 3
  assert info.split_sizes == {"train": 11, "validation": 4}
  assert info.settings["short_side"] == 256 and info.settings["split_sizes"]["train"] == 11


def test_tfds_data_source_reads_the_same_records(data_dir):
  out, train, _ = data_dir
  builder = tfds.builder_from_directory(out)
  assert builder.info.features["label"].names == CLASSES
  assert builder.info.splits["train"].shard_lengths == [3, 4, 4]
  source = builder.as_data_source("train")
  by_id = {r["video_id"]: r for r in train}
  assert len(source) == len(train)
  for i in range(len(source)):
    got = source[i]
    want = by_id[got["video_id"].decode()]
    assert list(got["frames"]) == want["frames"]
    assert (got["label"], got["fps"], got["num_frames"]) == (want["label"], 12.5,
                                                              want["num_frames"])
    assert (got["height"], got["width"]) == (12, 20)
  assert "tensorflow" not in sys.modules  # Read without TensorFlow.


def test_source_pickles_for_worker_processes(data_dir):
  out, train, _ = data_dir
  source = records.open_split(out, "train")
  source[0]  # Opens the files; the pickle must not carry the open readers.
  clone = pickle.loads(pickle.dumps(source))
  assert clone[7] == train[7] and len(clone) == 11


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_damaged_shard_names_the_file_and_record_and_others_still_read(data_dir, tmp_path,
                                                                        damage):
  out, train, _ = data_dir
  copy = str(tmp_path / "copy")
  shutil.copytree(out, copy)
  name = records.shard_name("train", 1, 3)  # Records 3-6 of the split.
  with open(os.path.join(copy, name), "rb") as f:
    data = bytearray(f.read())
  if damage == "truncated":  # The footer is gone: the file does not open at all.
    data = data[:len(data) // 2]
  else:  # Bytes inside the first record's chunk (records start after a 64-byte header).
    data[200:216] = bytes(b ^ 0x5A for b in data[200:216])
  with open(os.path.join(copy, name), "wb") as f:
    f.write(bytes(data))
  source = records.open_split(copy, "train")
  bad = []
  for i in range(3, 7):
    try:
      assert source[i] == train[i]
    except ValueError as e:
      assert f"{name} record {i - 3}: cannot read it" in str(e) and "damaged" in str(e)
      bad.append(i)
  assert bad == ([3, 4, 5, 6] if damage == "truncated" else [3])
  # The other shards still read (one reader per shard).
  assert [source[i] for i in (0, 1, 2, 7, 8, 9, 10)] == [train[i] for i in (0, 1, 2, 7, 8, 9, 10)]


def _raw_shard(out: str, split: str, serialized: list[bytes]) -> str:
  path = os.path.join(out, records.shard_name(split, 0, 1))
  writer = array_record_module.ArrayRecordWriter(path, records.WRITER_OPTIONS)
  for data in serialized:
    writer.write(data)
  writer.close()
  return path


def test_corrupt_jpeg_and_missing_key_name_shard_index_key(tmp_path):
  out = str(tmp_path)
  good = records.features().serialize_example(_record(0))
  truncated = dict(_record(1))
  truncated["frames"] = [truncated["frames"][0], truncated["frames"][1][:50]]
  truncated["num_frames"] = 2
  no_fps = {k: v for k, v in _record(2).items() if k != "fps"}
  full = records.features()
  no_fps_features = tfds.features.FeaturesDict({k: full[k] for k in records.SCHEMA if k != "fps"})
  _raw_shard(out, "train", [good, records.features().serialize_example(truncated),
                            no_fps_features.serialize_example(no_fps), b"not a proto \xff"])
  records.write_metadata(out, CLASSES, ["train"], {})
  source = records.open_split(out, "train")
  assert source[0] == _record(0)
  with pytest.raises(ValueError, match=r"train\.array_record-00000-of-00001 record 1: key "
                                       r"'frames'\[1\] is not a complete JPEG"):
    source[1]
  with pytest.raises(ValueError, match=r"00000-of-00001 record 2: missing key 'fps'"):
    source[2]
  with pytest.raises(ValueError, match=r"00000-of-00001 record 3: not a serialized"):
    source[3]


def test_label_out_of_range_and_bad_types(tmp_path):
  with pytest.raises(ValueError, match=r"here: key 'label' is 5, expected < 3"):
    records.decode_record(records.features().serialize_example(dict(_record(0), label=5)),
                          "here", num_classes=3)
  with pytest.raises(ValueError, match=r"here: key 'num_frames' is 4 but 'frames' holds 3"):
    records.validate_record(dict(_record(0), num_frames=4), "here")
  with pytest.raises(ValueError, match=r"here: key 'video_id' must be a non-empty str"):
    records.validate_record(dict(_record(0), video_id=""), "here")


def test_failed_shard_write_leaves_nothing_that_looks_finished(tmp_path):
  out = str(tmp_path)
  bad = {k: v for k, v in _record(1).items() if k != "label"}
  with pytest.raises(ValueError, match=r"train\.array_record-00000-of-00002 record 1: missing "
                                       r"key 'label'"):
    with records.ShardWriter(out, "train", 0, 2) as writer:
      writer.write(_record(0))
      writer.write(bad)
  assert os.listdir(out) == []
  assert not records.shard_is_done(out, "train", 0, 2)


def test_stale_partial_is_replaced_and_incomplete_split_rejected(tmp_path):
  out = str(tmp_path)
  os.makedirs(os.path.join(out, records.PARTIAL_DIR))
  stale = os.path.join(out, records.PARTIAL_DIR, records.shard_name("train", 1, 2))
  with open(stale, "wb") as f:
    f.write(b"half a shard")
  with pytest.raises(ValueError, match=r"missing \['train\.array_record-00000-of-00002"):
    with records.ShardWriter(out, "train", 1, 2) as writer:
      writer.write(_record(0))
    records.shard_paths(out, "train")
  assert records.count_records(os.path.join(out, records.shard_name("train", 1, 2))) == 1
  assert not os.path.exists(stale)


def test_shard_ranges_are_contiguous_and_balanced():
  ranges = records.shard_ranges(10, 4)
  assert [list(r) for r in ranges] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
  with pytest.raises(ValueError, match="num_shards"):
    records.shard_ranges(3, 0)

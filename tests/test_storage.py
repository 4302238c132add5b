"""The path layer (`data_pipelines.storage`) and the writers built on it, on local disk and on gs://."""

import json
import os

import pytest
from etils import epath

from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.training import logs


def test_local_paths_are_absolute_urls_unchanged(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.path("runs/a")) == str(tmp_path / "runs" / "a")
  assert os.fspath(storage.path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
  assert os.fspath(storage.path(storage.path("gs://b/x") / "y")) == "gs://b/x/y"
  assert storage.is_remote("gs://b/x") and not storage.is_remote(tmp_path)


def test_unsupported_scheme_is_an_error_not_a_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(storage.StorageError, match=r"s3://b/run: unsupported storage scheme s3://"):
    storage.path("s3://b/run")
  assert not list(tmp_path.iterdir())


def test_local_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
  target = tmp_path / "deep" / "out.json"
  storage.write_json(target, {"a": 1})
  storage.write_json(target, {"a": 2})
  assert storage.read_json(target) == {"a": 2}
  assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_bad_json_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(storage.StorageError, match=r"config.json: not valid JSON"):
    storage.read_json(tmp_path / "config.json")


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "wd").write_text("")
  with pytest.raises(storage.StorageError, match=r"is a file, expected a directory"):
    storage.check_workdir(tmp_path / "wd")
  assert storage.check_workdir(tmp_path / "new") == epath.Path(tmp_path / "new")


def test_mirror_uploads_only_changed_files(tmp_path, gcs):
  local, remote, sent = tmp_path / "events", f"{gcs}/mirror", {}
  local.mkdir()
  (local / "a").write_bytes(b"1")
  (local / "b").write_bytes(b"22")
  storage.mirror_dir(str(local), remote, sent)
  assert sent == {"a": 1, "b": 2}
  (local / "a").write_bytes(b"111")
  storage.path(f"{remote}/b").write_bytes(b"changed remotely")  # Must not be re-sent.
  storage.mirror_dir(str(local), remote, sent)
  assert storage.path(f"{remote}/a").read_bytes() == b"111"
  assert storage.path(f"{remote}/b").read_bytes() == b"changed remotely"


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_metric_writer_resume_truncates_later_steps(where, tmp_path, request):
  root = request.getfixturevalue("gcs") + "/metrics" if where == "gcs" else str(tmp_path)
  path = f"{root}/run/metrics.jsonl"
  with logs.MetricWriter(path, process_index=0) as w:
    for step in (1, 2, 3):
      w.write(step, {"loss": float(step)})
  # A resumed run restored step 2: step 3 is about to be redone.
  with logs.MetricWriter(path, process_index=0, keep_until_step=2) as w:
    w.write(3, {"loss": 30.0})
    w.write(4, {"loss": 40.0})
  rows = [json.loads(line) for line in storage.read_text(path).splitlines()]
  assert rows == [{"step": s, "loss": v} for s, v in ((1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0))]


def test_metric_writer_refuses_a_foreign_file(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nhello\n')
  with pytest.raises(storage.StorageError, match=r"metrics.jsonl line 2: not a metrics record"):
    logs.MetricWriter(tmp_path / "metrics.jsonl", process_index=0)


def test_tensorboard_events_reach_the_bucket(gcs):
  logdir = f"{gcs}/tb/run"
  writer = logs.TensorBoardWriter(logdir)
  writer.write(1, {"train/loss": 2.5})
  names = [p.name for p in storage.path(logdir).iterdir()]
  assert len(names) == 1 and names[0].startswith("events.out.tfevents.")
  writer.write(2, {"train/loss": 1.5})
  writer.close()
  data = storage.path(f"{logdir}/{names[0]}").read_bytes()
  assert data.count(b"train/loss") == 2


def test_copy_data_dir_to_bucket_and_back_resumes(tmp_path, gcs):
  import test_cli
  from data_pipelines import copy_data
  from data_pipelines.records import reading
  from data_pipelines.records import schema
  data = tmp_path / "data"
  test_cli._run("data_pipelines.make_demo", "--out", str(data), "--videos_per_class", "1",
                "--val_videos_per_class", "1", "--size", "32", "--frames", "4", "--workers", "0")
  remote, back = f"{gcs}/copy/demo", tmp_path / "back"
  files, size = copy_data.copy_data_dir(str(data), remote)
  assert files > 0 and size > 0
  assert copy_data.copy_data_dir(str(data), remote) == (0, 0)  # Rerun: everything is there.
  copy_data.copy_data_dir(remote, str(back), splits=["validation"])
  shards = [p.name for p in back.iterdir() if schema.parse_shard_name(p.name)]
  assert shards and all(schema.parse_shard_name(n)[0] == "validation" for n in shards)
  indices = [p.name for p in back.iterdir() if p.name.endswith(schema.INDEX_SUFFIX)]
  assert sorted(indices) == sorted(n + schema.INDEX_SUFFIX for n in shards)  # Only these.
  for name in shards + ["dataset_info.json", schema.SETTINGS_FILE]:
    assert (back / name).read_bytes() == (data / name).read_bytes(), name
  assert reading.read_info(str(back)).class_names == reading.read_info(str(data)).class_names
  assert len(reading.open_split(str(back), "validation")) == 12
  with pytest.raises(cli.UserError, match=r"no split\(s\) \[.test.\]"):
    copy_data.plan(str(data), ["test"])

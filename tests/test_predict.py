"""predict: same views and top-1 as the eval pipeline on one checkpoint; bad files are skipped.

`trained_run()` (shared with test_gradcam.py) builds a small dataset of .mp4 files through the
real builder, in which the class is the colour of one square moving over a grey texture, trains
a tiny FSTFL-Net on it with the real train loop and writes the workdir's config.json as
`fstfl_jax.main` does. The object's box in every frame is kept, for Grad-CAM's localisation test.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest

from configs import base
from configs import common
from configs import demo
from data_pipelines import build as build_lib
from data_pipelines import make_demo
from data_pipelines import pipeline
from data_pipelines.records import reading
from fstfl_jax.apps import experiment
from fstfl_jax.apps import inference
from fstfl_jax.apps import predict
from fstfl_jax.apps import video_io
from fstfl_jax.evaluation import evaluate
from fstfl_jax.evaluation import protocols
from fstfl_jax.models import build_model
from fstfl_jax.training import checkpointing
from fstfl_jax.training import sharding
import video_fixtures

SIZE, FRAMES, T = 64, 8, 4          # Frame side, frames per file, frames per clip.
OBJECT = 14                         # Side of the moving square, in pixels.
COLOURS = {"blue_square": (40, 70, 230), "green_square": (40, 210, 70),
           "red_square": (230, 50, 40)}
CLASSES = tuple(sorted(COLOURS))
TRAIN_PER_CLASS, VAL_PER_CLASS = 24, 4
TRAIN_STEPS = 60


def render(cls: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A clip of a textured square of `cls`'s colour moving in a straight line over grey texture.

  Returns:
    uint8 [FRAMES, SIZE, SIZE, 3] and the square's boxes int [FRAMES, 4] as (y0, x0, y1, x1).
  """
  coarse = rng.normal(size=(8, 8))
  grey = 128 + 25 * np.kron(coarse, np.ones((SIZE // 8, SIZE // 8)))
  velocity = rng.integers(-2, 3, size=2)
  travel = np.abs(velocity) * (FRAMES - 1)
  low = np.where(velocity < 0, travel, 0)
  start = low + rng.integers(0, SIZE - OBJECT - travel + 1)
  texture = 1 + 0.15 * rng.normal(size=(OBJECT, OBJECT, 1))
  clip = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
  boxes = np.empty((FRAMES, 4), np.int64)
  for t in range(FRAMES):
    frame = np.repeat(grey[..., None], 3, -1) + rng.normal(0, 6, (SIZE, SIZE, 3))
    y, x = start + velocity * t
    frame[y:y + OBJECT, x:x + OBJECT] = np.asarray(COLOURS[cls]) * texture
    clip[t] = frame.clip(0, 255).round()
    boxes[t] = (y, x, y + OBJECT, x + OBJECT)
  return clip, boxes


def make_dataset(root: str) -> dict[str, np.ndarray]:
  """Writes `<root>/raw/<split>/<class>/<k>.mp4`, builds `<root>/data`; returns boxes by file."""
  boxes = {}
  for s, (split, count) in enumerate((("train", TRAIN_PER_CLASS), ("validation", VAL_PER_CLASS))):
    for c, cls in enumerate(CLASSES):
      os.makedirs(os.path.join(root, "raw", split, cls))
      for k in range(count):
        clip, boxes_k = render(cls, np.random.default_rng([s, c, k]))
        path = os.path.join(root, "raw", split, cls, f"{k:02d}.mp4")
        make_demo.write_mp4(path, clip)
        boxes[path] = boxes_k
  build_lib.build("folder", os.path.join(root, "raw"), os.path.join(root, "data"), workers=0,
                  num_shards=1, name="squares")
  return boxes


def tiny_config(data_dir: str):
  # The demo's facts and protocols with the paper's recipe.
  config = base.make_config("demo", common.parse_arg(f"model=fstfl,frames={T}"),
                           num_classes=demo.NUM_CLASSES, flip=demo.FLIP)
  config.evals, config.train_eval = ml_collections.ConfigDict(demo.EVALS), "val_1x1"
  config.model.num_classes = len(CLASSES)
  config.model.width = 8
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.dropout = 0.0
  config.model.stc.max_disp = 2
  inp = config.input
  inp.data_dir = data_dir
  inp.crop_size = inp.resize_short = SIZE      # The centre view is the whole frame.
  inp.scales = (1.0, 0.875)
  inp.batch_size = inp.eval_batch_size = 8
  inp.num_threads = 2
  config.train.num_train_examples = TRAIN_PER_CLASS * len(CLASSES)
  config.train.num_train_steps = TRAIN_STEPS
  config.train.log_every_steps = TRAIN_STEPS
  config.optim.base_lr, config.optim.base_batch = 0.05, 8
  config.optim.num_epochs, config.optim.warmup_epochs = 7, 1   # Epochs of 9 steps.
  config.checkpoint.async_save = False
  return config


@functools.cache
def trained_run() -> dict[str, Any]:
  """Dataset + trained workdir, made once per test session (about a minute on 2 cores)."""
  root = tempfile.mkdtemp(prefix="fstfl_predict_")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  boxes = make_dataset(root)
  config = tiny_config(os.path.join(root, "data"))
  workdir = os.path.join(root, "workdir")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  # rbg keys: parameter init compiles much faster than with threefry, the main cost of this
  # setup; nothing tested here depends on the PRNG.
  with jax.default_prng_impl("unsafe_rbg"):
    experiment.train_and_evaluate(config, workdir, with_eval=False)
  return dict(root=root, config=config, workdir=workdir, boxes=boxes,
              val_dir=os.path.join(root, "raw", "validation"))


@pytest.fixture(scope="module")
def run():
  return trained_run()


@pytest.fixture(scope="module")
def eval_predictions(run):
  """The eval pipeline's per-video predictions (val_1x1) on the latest checkpoint, by file."""
  config, mesh = run["config"], sharding.make_mesh()
  variables, _ = inference.restore_variables(config, run["workdir"], "latest", mesh)
  eval_step = protocols.protocol_step(config, "val_1x1", build_model(config.model))
  result = evaluate.run_protocol(config, "val_1x1", eval_step, variables, mesh,
                                 with_predictions=True)
  split = reading.open_split(config.input.data_dir, "validation")
  by_file = {}
  for row in result["predictions"]:
    video_id = split[row["index"]]["video_id"]  # "<class>/<stem>" in the folder layout.
    assert row["video_id"] == video_id  # The score file names its videos.
    by_file[os.path.join(run["val_dir"], video_id + ".mp4")] = row
  return result, by_file


def test_views_are_those_of_the_eval_pipeline(run):
  """Bit-identical multi-view input (2 clips x 3 crops) for every validation file."""
  config = run["config"].copy_and_resolve_references()
  config.input.resize_short = SIZE + 8    # Crops that differ, so their order is checked too.
  settings = video_io.decode_settings(config.input.data_dir)
  batches = pipeline.make_eval_iter(config.input, clips=2, crops=3)
  split = reading.open_split(config.input.data_dir, "validation")
  checked = 0
  for batch in batches:
    for video, index, mask in zip(batch["video"], batch["index"], batch["mask"]):
      if not mask:
        continue
      path = os.path.join(run["val_dir"], split[index]["video_id"] + ".mp4")
      views = video_io.load_views(path, config.input, clips=2, crops=3, settings=settings)
      np.testing.assert_array_equal(views, video, err_msg=path)
      checked += 1
  assert checked == VAL_PER_CLASS * len(CLASSES)


def test_top1_equals_eval_pipeline_prediction(run, eval_predictions, capsys):
  result, by_file = eval_predictions
  # The checkpoint learnt the task, so top-1 varies between videos and the comparison bites.
  assert result["top1"] >= 0.75, result["top1"]
  assert len({row["top5"][0] for row in by_file.values()}) == len(CLASSES)

  status = predict.main(["--workdir", run["workdir"], "--video", run["val_dir"], "--json",
                         "--topk", "5"])
  assert status == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert sorted(line["video"] for line in lines) == sorted(by_file)
  for line in lines:
    row = by_file[line["video"]]
    top = line["topk"]
    assert len(top) == len(CLASSES)      # --topk 5 is clamped to the 3 classes.
    assert [t["index"] for t in top] == row["top5"], line["video"]
    assert [t["class"] for t in top] == [CLASSES[i] for i in row["top5"]]
    want = inference.softmax(np.asarray(row["top5_logits"], np.float64))
    np.testing.assert_allclose([t["prob"] for t in top], want, atol=1e-4)


def test_undecodable_file_is_reported_and_others_still_run(run, tmp_path, capsys):
  good = sorted(os.path.join(run["val_dir"], CLASSES[0], n)
                for n in os.listdir(os.path.join(run["val_dir"], CLASSES[0])))[:2]
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
  missing = str(tmp_path / "missing.mp4")
  status = predict.main(["--workdir", run["workdir"], "--video", good[0], "--video", str(corrupt),
                         "--video", missing, "--video", good[1], "--topk", "2",
                         "--batch_size", "3"])
  captured = capsys.readouterr()
  assert status == 0
  out = captured.out.splitlines()
  assert [line.split(": ")[0] for line in out] == good   # In input order.
  for line in out:
    names_probs = [item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", ")]
    assert len(names_probs) == 2 and all(name in CLASSES for name, _ in names_probs)
    probs = [float(p) for _, p in names_probs]
    assert probs[0] >= probs[1] and sum(probs) <= 1.001
  errors = [line for line in captured.err.splitlines() if "error" in line]
  assert len(errors) == 2
  assert str(corrupt) in errors[0] and "cannot decode" in errors[0]
  assert missing in errors[1] and "not found" in errors[1]

  status = predict.main(["--workdir", run["workdir"], "--video", str(corrupt), "--video", missing])
  assert status == predict.ERROR_STATUS_ALL_FAILED
  assert capsys.readouterr().out == ""


def test_truncated_files_are_reported_by_predict_and_gradcam(run, tmp_path, capsys):
  from fstfl_jax.apps import gradcam  # pylint: disable=g-import-not-at-top
  good = os.path.join(run["val_dir"], CLASSES[0], "00.mp4")
  cut = []
  for ext in (".webm", ".avi"):
    whole = video_fixtures.write_video(str(tmp_path / f"whole{ext}"), num_frames=30, fps=12)
    with open(whole, "rb") as f:
      data = f.read()
    cut.append(str(tmp_path / f"cut{ext}"))
    with open(cut[-1], "wb") as f:
      f.write(data[:int(len(data) * 0.7)])  # PyAV decodes the first frames without an error.
  status = predict.main(["--workdir", run["workdir"], "--video", cut[0], "--video", good,
                         "--video", cut[1]])
  captured = capsys.readouterr()
  assert status == 0
  assert [line.split(": ")[0] for line in captured.out.splitlines()] == [good]
  errors = captured.err.splitlines()
  for path, line in zip(cut, [e for e in errors if "error" in e]):
    assert line.startswith(f"fstfl-predict: error: {path}: ") and "decoded " in line
    assert "of 30 frames" in line

  status = gradcam.main(["--workdir", run["workdir"], "--video", cut[0],
                         "--out", str(tmp_path / "cam.png")])
  err = capsys.readouterr().err
  assert status == 1 and f"fstfl-gradcam: error: {cut[0]}: " in err and "of 30 frames" in err
  assert not (tmp_path / "cam.png").exists()


def test_checkpoint_with_nonfinite_weights_is_refused(run, tmp_path, capsys):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state, step = checkpointing.restore_state_only(run["workdir"], None, sharding.make_mesh())
  state = jax.tree.map(np.array, jax.device_get(state))
  state["params"]["fc"]["kernel"][0, 0] = np.nan
  workdir = tmp_path / "nan_run"
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(str(workdir)))
  manager.save(step, args=ocp.args.Composite(
    **{checkpointing.STATE: ocp.args.StandardSave(state)}))
  manager.wait_until_finished()
  manager.close()
  shutil.copy(os.path.join(run["workdir"], "config.json"), workdir / "config.json")
  good = os.path.join(run["val_dir"], CLASSES[0], "00.mp4")
  status = predict.main(["--workdir", str(workdir), "--video", good])
  captured = capsys.readouterr()
  assert status == predict.ERROR_STATUS_ALL_FAILED and captured.out == ""
  assert f"checkpoint step {step}: params/fc/kernel holds NaN or Inf" in captured.err
  from fstfl_jax.apps import gradcam  # pylint: disable=g-import-not-at-top
  status = gradcam.main(["--workdir", str(workdir), "--video", good,
                         "--out", str(tmp_path / "cam.png")])
  assert status == 1 and "params/fc/kernel holds NaN or Inf" in capsys.readouterr().err
  assert not (tmp_path / "cam.png").exists()


def test_expand_paths_walks_folders_and_keeps_frame_folders(tmp_path):
  for name in ("b/2.mp4", "b/1.avi", "a/x.webm", "a/notes.txt", "frames/00001.jpg"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  got = video_io.expand_paths([str(tmp_path), str(tmp_path / "frames"), "nope.mp4"])
  want = ["a/x.webm", "b/1.avi", "b/2.mp4", "frames", "frames", "nope.mp4"]
  assert [os.path.relpath(p, tmp_path) if p != "nope.mp4" else p for p in got] == want


def test_class_names_fall_back_to_indices(run, capsys):
  config = run["config"].copy_and_resolve_references()
  assert inference.class_names(config, "predict") == list(CLASSES)
  config.input.data_dir = "/nonexistent"
  assert inference.class_names(config, "predict") == ["class 0", "class 1", "class 2"]
  assert "/nonexistent" in capsys.readouterr().err


def test_devices_do_not_change_predictions(run):
  """A checkpoint from the 8-device run restores onto one device with the same logits."""
  config = run["config"]
  files = sorted(os.path.join(run["val_dir"], c, "00.mp4") for c in CLASSES)
  outs = []
  for devices in (1, 8):
    mesh = sharding.make_mesh(devices)
    variables, _ = inference.restore_variables(config, run["workdir"], "latest", mesh)
    predictor = predict.Predictor(config, variables, mesh, clips=1, crops=1, batch_size=1)
    outs.append(np.stack([logits for _, logits, _ in predictor.run(files)]))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
  assert jax.device_count() == 8

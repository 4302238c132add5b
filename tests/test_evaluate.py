"""evaluate_state against a numpy hand computation from per-view logits of a tiny model.

The tiny model honours the model contract (`video [N, T, H, W, 3]` uint8 pixels ->
logits [N, K], BatchNorm in eval mode), so the eval logic is tested without the cost of
compiling a ResNet.
"""

import functools
import importlib
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import simplejpeg
from PIL import Image

from configs.common import input_config
from data_pipelines import pipeline
from data_pipelines.records import writing
from fstfl_jax.apps import experiment
from fstfl_jax.evaluation import evaluate
from fstfl_jax.evaluation import protocols
from fstfl_jax.evaluation import reporting
from fstfl_jax.evaluation import scores
from fstfl_jax.training import checkpointing
from fstfl_jax.training import sharding
from fstfl_jax.training import steps as steps_lib

K = 7                 # Classes: > 5 so that top-5 is not trivially 1.
T, S = 2, 8           # Frames and crop size.
CLIPS, CROPS = 2, 3
V = CLIPS * CROPS
B = 8                 # Videos per batch: divisible by the 8 emulated devices.
NUM_VIDEOS = 21       # 3 batches; the last holds 3 padding rows.


class TinyVideoNet(nn.Module):
  """Per-frame conv + BN + linear classifier, logits averaged over frames (TSN consensus)."""
  num_classes: int = K

  @nn.compact
  def __call__(self, video, train=False):
    n, t = video.shape[:2]
    # Stands in for the ImageNet normalisation of the real model: uint8 -> [0, 1].
    x = video.reshape((n * t,) + video.shape[2:]).astype(jnp.float32) / 255.0
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
    return x.reshape(n, t, self.num_classes).mean(axis=1)


@pytest.fixture(scope="module")
def model_and_vars():
  model = TinyVideoNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, T, S, S, 3)))
  # Non-trivial running statistics, so eval-mode BN (not batch statistics) matters.
  rng = np.random.default_rng(0)
  stats = variables["batch_stats"]["BatchNorm_0"]
  variables["batch_stats"]["BatchNorm_0"] = dict(
    mean=jnp.asarray(rng.normal(size=stats["mean"].shape), jnp.float32) * 0.1,
    var=jnp.asarray(rng.uniform(0.5, 2.0, size=stats["var"].shape), jnp.float32))
  return model, variables


@pytest.fixture(scope="module")
def dataset(model_and_vars):
  """Videos, per-view reference logits and labels; half the labels are the model's top-1."""
  model, variables = model_and_vars
  rng = np.random.default_rng(1)
  # A colour per view plus noise: views of a video disagree, and videos differ.
  colour = rng.integers(0, 256, size=(NUM_VIDEOS, V, 1, 1, 1, 3))
  noise = rng.integers(-40, 41, size=(NUM_VIDEOS, V, T, S, S, 3))
  video = np.clip(colour + noise, 0, 255).astype(np.uint8)
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))
  # Reference: the model called directly on every view on its own.
  view_logits = np.stack([np.asarray(apply(video[:, v])) for v in range(V)], axis=1)
  video_logits = view_logits.astype(np.float64).mean(axis=1)
  labels = rng.integers(0, K, NUM_VIDEOS).astype(np.int32)
  labels[::2] = np.argmax(video_logits[::2], axis=-1)
  return dict(video=video, labels=labels, view_logits=view_logits, video_logits=video_logits)


def make_batches(data, *, pad_label_fn=None, order=None):
  """Per-process batches in the pipeline format; the last batch is padded and masked.

  Padding copies real videos with a label chosen by `pad_label_fn`, so that counting the
  padding would change the metrics.
  """
  order = np.arange(NUM_VIDEOS) if order is None else order
  num_batches = -(-NUM_VIDEOS // B)
  pad = num_batches * B - NUM_VIDEOS
  src = np.concatenate([order, order[:pad]])
  labels = data["labels"][src].copy()
  if pad_label_fn is not None:
    labels[NUM_VIDEOS:] = pad_label_fn(src[NUM_VIDEOS:])
  mask = np.arange(len(src)) < NUM_VIDEOS
  index = np.where(mask, src, -1).astype(np.int32)
  return [dict(video=data["video"][src[i:i + B]], label=labels[i:i + B], mask=mask[i:i + B],
               index=index[i:i + B]) for i in range(0, len(src), B)]


def hand_metrics(logits, labels):
  """top-1, top-5 and mean per-class accuracy in plain numpy (stable order for ties)."""
  order = np.argsort(-logits, axis=-1, kind="stable")
  rank = np.argmax(order == labels[:, None], axis=-1)
  per_class = [np.mean(rank[labels == c] == 0) for c in np.unique(labels)]
  return dict(top1=np.mean(rank < 1), top5=np.mean(rank < 5), mean_class=np.mean(per_class))


@functools.cache
def eval_step(model):
  """One compiled eval step per tiny model, shared by the tests (as a run shares its own)."""
  return steps_lib.make_eval_step(model, K)


def run(model_and_vars, batches, mesh, **kwargs):
  model, variables = model_and_vars
  variables = jax.device_put(variables, sharding.replicated(mesh))
  return evaluate.evaluate_state(eval_step(model), variables, iter(batches),
                                 mesh=mesh, num_classes=K,
                                 num_batches=len(batches), **kwargs)


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh(8)


def right_label(data):
  """The model's top-1 for those videos: counting the padding would raise the accuracies."""
  return lambda src: np.argmax(data["video_logits"][src], axis=-1)


def test_matches_hand_computation_with_padding_excluded(model_and_vars, dataset, mesh8):
  batches = make_batches(dataset, pad_label_fn=right_label(dataset))
  got = run(model_and_vars, batches, mesh8, with_predictions=True)
  want = hand_metrics(dataset["video_logits"], dataset["labels"])
  # The reference would differ if the padded rows (copies of videos 0-2) were counted.
  all_labels = np.concatenate([b["label"] for b in batches])
  all_src = np.concatenate([np.arange(NUM_VIDEOS), np.arange(len(all_labels) - NUM_VIDEOS)])
  with_padding = hand_metrics(dataset["video_logits"][all_src], all_labels)
  assert with_padding["top1"] != pytest.approx(want["top1"])
  assert with_padding["mean_class"] != pytest.approx(want["mean_class"])

  assert got["num_videos"] == NUM_VIDEOS
  assert got["top1"] == pytest.approx(want["top1"])
  assert got["top5"] == pytest.approx(want["top5"])
  assert got["mean_class_accuracy"] == pytest.approx(want["mean_class"])
  assert 0.4 < got["top1"] < 1.0 and got["top5"] > got["top1"]  # Non-degenerate data.
  want_confusion = np.zeros((K, K), np.int64)
  np.add.at(want_confusion, (dataset["labels"], np.argmax(dataset["video_logits"], -1)), 1)
  np.testing.assert_array_equal(got["confusion"], want_confusion)
  log_p = dataset["video_logits"] - np.log(
    np.exp(dataset["video_logits"]).sum(-1, keepdims=True))
  want_loss = -np.mean(log_p[np.arange(NUM_VIDEOS), dataset["labels"]])
  assert got["loss"] == pytest.approx(want_loss, rel=1e-5)

  preds = got["predictions"]
  assert [p["index"] for p in preds] == list(range(NUM_VIDEOS))
  want_top5 = np.argsort(-dataset["video_logits"], axis=-1, kind="stable")[:, :5]
  assert [p["top5"] for p in preds] == want_top5.tolist()
  assert [p["label"] for p in preds] == dataset["labels"].tolist()


def test_nonfinite_scores_count_as_wrong(model_and_vars, dataset, mesh8):
  """A NaN classifier used to score 100% top-1/top-5: NaN compares false, so it ranked first."""
  model, variables = model_and_vars
  dense = variables["params"]["Dense_0"]
  poisoned = dict(variables, params=dict(variables["params"], Dense_0=dict(
    dense, bias=dense["bias"].at[0].set(jnp.nan))))
  got = run((model, poisoned), make_batches(dataset), mesh8)
  assert got["num_videos"] == NUM_VIDEOS and got["nonfinite"] == NUM_VIDEOS
  assert got["top1"] == got["top5"] == got["mean_class_accuracy"] == 0.0
  assert got["confusion"].sum() == 0  # No video has a predicted class.
  clean = run(model_and_vars, make_batches(dataset), mesh8)
  assert clean["nonfinite"] == 0 and clean["confusion"].sum() == NUM_VIDEOS


@pytest.mark.parametrize("mesh_kind", ["1 device", "8 explicit"])
def test_mesh_and_order_do_not_matter(model_and_vars, dataset, mesh8, mesh_kind):
  if mesh_kind == "1 device":
    mesh = sharding.make_mesh(1)
  else:
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  shuffled = np.random.default_rng(3).permutation(NUM_VIDEOS)
  want = run(model_and_vars, make_batches(dataset), mesh8)
  got = run(model_and_vars, make_batches(dataset, order=shuffled), mesh)
  for key in ("top1", "top5", "mean_class_accuracy", "num_videos"):
    assert got[key] == pytest.approx(want[key]), key
  np.testing.assert_array_equal(got["confusion"], want["confusion"])


@pytest.mark.parametrize("views_per_step", [None, 1, 3])
def test_view_average_is_mean_of_per_view_logits(model_and_vars, dataset, mesh8, views_per_step):
  model, variables = model_and_vars
  step = steps_lib.make_eval_step(model, K, views_per_step)
  batch = make_batches(dataset)[0]
  with jax.set_mesh(mesh8):
    out = step(jax.device_put(variables, sharding.replicated(mesh8)),
               sharding.to_global({k: batch[k] for k in ("video", "label", "mask")}, mesh8))
  np.testing.assert_allclose(out["logits"], dataset["view_logits"][:B].mean(axis=1),
                             rtol=1e-5, atol=1e-6)
  # Averaging changes the answer here: some videos' views disagree with their average.
  per_view_top1 = np.argmax(dataset["view_logits"][:B], -1)
  assert (per_view_top1 != np.argmax(out["logits"], -1)[:, None]).any()


def test_repeated_video_index_is_rejected(model_and_vars, dataset, mesh8):
  batches = make_batches(dataset)
  batches[2]["index"] = batches[2]["index"].copy()
  batches[2]["index"][0] = batches[0]["index"][1]
  with pytest.raises(ValueError, match="repeats video indices"):
    run(model_and_vars, batches, mesh8)


def test_short_input_and_bad_batches_are_rejected(model_and_vars, dataset, mesh8):
  batches = make_batches(dataset)
  model, variables = model_and_vars
  with pytest.raises(ValueError, match="ended after 3 batches; 4 were expected"):
    evaluate.evaluate_state(eval_step(model), variables, iter(batches), mesh=mesh8,
                            num_classes=K, num_batches=4)
  bad = [dict(batches[0], label=np.full(B, K, np.int32))]
  with pytest.raises(ValueError, match=r"labels outside \[0, 7\)"):
    run(model_and_vars, bad, mesh8)
  odd = [{k: v[:6] for k, v in batches[0].items()}]
  with pytest.raises(ValueError, match="6 videos per process, which does not split over the 8"):
    run(model_and_vars, odd, mesh8)
  with pytest.raises(ValueError, match="no 'index' entry"):
    run(model_and_vars, [{k: v for k, v in batches[0].items() if k != "index"}], mesh8)


def _png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = Image.open(path)
  image.load()  # Decodes every pixel: fails on a truncated file.
  return image


@pytest.mark.parametrize("k,names", [(5, ["a", "b", "c", "d", "e"]), (40, None)])
def test_confusion_png(tmp_path, k, names):
  confusion = np.random.default_rng(k).integers(0, 9, size=(k, k))
  path = tmp_path / "c.png"
  reporting.save_confusion_png(confusion, str(path), title="t", class_names=names)
  image = _png(path)
  assert image.format == "PNG" and image.text["num_classes"] == str(k)
  # The picture depends on the matrix.
  reporting.save_confusion_png(np.eye(k, dtype=int), str(tmp_path / "eye.png"), title="t",
                              class_names=names)
  other = _png(tmp_path / "eye.png")
  assert other.size == image.size
  assert np.any(np.asarray(other) != np.asarray(image))
  with pytest.raises(ValueError, match="class names"):
    reporting.save_confusion_png(confusion, str(path), class_names=["x"])


NUM_VAL, DATA_K = 7, 12  # Written dataset: 7 validation videos, the 12 classes of "demo".


@pytest.fixture(scope="module")
def written_model():
  model = TinyVideoNet(num_classes=DATA_K)
  return model, model.init(jax.random.key(1), jnp.zeros((1, T, S, S, 3)))


def _write_split(path, frames, labels):
  recs = [dict(frames=[simplejpeg.encode_jpeg(f, quality=95, colorspace="RGB") for f in video],
               label=int(label), video_id=f"v{v}", fps=6.0, height=24, width=32, num_frames=6)
          for v, (video, label) in enumerate(zip(frames, labels))]
  writing.write_split(path, "validation", recs, num_shards=1)
  writing.write_metadata(path, [f"class{k}" for k in range(DATA_K)], ["validation"],
                         dict(source="test"))
  return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, written_model):
  """A validation split in the record format: noisy frames of one colour per video.

  Odd videos are labelled with the tiny model's single-view prediction, so accuracies are
  neither 0 nor 1.
  """
  rng = np.random.default_rng(5)
  colour = rng.integers(0, 256, (NUM_VAL, 1, 1, 1, 3))
  frames = np.clip(colour + rng.integers(-40, 41, (NUM_VAL, 6, 24, 32, 3)), 0, 255)
  frames = frames.astype(np.uint8)
  labels = rng.integers(0, DATA_K, NUM_VAL)
  probe = _write_split(str(tmp_path_factory.mktemp("probe")), frames, labels)
  model, variables = written_model
  batches = list(pipeline.make_eval_iter(_config(probe).input))
  video = np.concatenate([b["video"] for b in batches])[:NUM_VAL, 0]
  logits = model.apply(variables, video, train=False)
  labels[1::2] = np.argmax(logits, axis=-1)[1::2]
  return _write_split(str(tmp_path_factory.mktemp("videos")), frames, labels)


def _config(data_dir):
  input_cfg = input_config("demo", T)
  input_cfg.update(dict(data_dir=data_dir, crop_size=S, resize_short=10, eval_batch_size=4,
                        num_threads=2))
  return ml_collections.ConfigDict(dict(
    model=dict(num_classes=DATA_K, num_frames=T),
    input=input_cfg,
    evals=dict(val_1x1=dict(clips=1, crops=1),
               val_2x3=dict(clips=CLIPS, crops=CROPS, views_per_step=3, clip_sampling="random")),
    checkpoint=dict(keep_latest=2, keep_best=1, async_save=False),
  ))


def test_protocol_config_and_errors(tmp_path):
  config = _config(str(tmp_path))
  assert protocols.training_protocol(config) == "val_1x1"  # Fewest views.
  config.train_eval = "val_2x3"
  assert protocols.training_protocol(config) == "val_2x3"
  config.train_eval = "val_3x3"
  with pytest.raises(ValueError, match="No eval protocol 'val_3x3'"):
    protocols.training_protocol(config)
  assert protocols.protocol_views(config, "val_2x3") == (CLIPS, CROPS)
  assert protocols.protocol_input(config, "val_2x3").test_clip_sampling == "random"
  assert protocols.protocol_input(config, "val_1x1").test_clip_sampling == "uniform"
  with pytest.raises(ValueError, match="No eval protocol 'val_9x9'"):
    protocols.protocol_views(config, "val_9x9")
  config.evals.val_1x1.crops = 0
  with pytest.raises(ValueError, match="config.evals.val_1x1.crops must be a positive int"):
    protocols.protocol_views(config, "val_1x1")


def test_evaluate_on_written_data_restores_8_device_checkpoint_on_1_device(
    tmp_path, monkeypatch, data_dir, written_model, mesh8):
  """evaluate() end to end with the real input pipeline; only the model is the tiny one."""
  config = _config(data_dir)
  model, variables = written_model
  workdir = tmp_path / "run"
  state = dict(step=jnp.int32(12), params=variables["params"],
               batch_stats=variables["batch_stats"], opt_state=dict(count=jnp.int32(3)),
               rng=jnp.zeros(2, jnp.uint32))
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(str(workdir)),
                                       config.checkpoint)
  manager.save(12, args=ocp.args.Composite(
    state=ocp.args.StandardSave(jax.device_put(state, sharding.replicated(mesh8)))),
    metrics={"top1": 0.5})
  manager.wait_until_finished()
  manager.close()
  monkeypatch.setattr(experiment, "build_model", lambda cfg: model)

  mesh1 = sharding.make_mesh(1)
  results = experiment.evaluate_checkpoint(config, str(workdir), checkpoint="best",
                                           with_predictions=True, mesh=mesh1)

  apply = jax.jit(lambda x: model.apply(variables, x, train=False))
  video_logits = {}
  for name, (clips, crops) in (("val_1x1", (1, 1)), ("val_2x3", (CLIPS, CROPS))):
    batches = list(pipeline.make_eval_iter(protocols.protocol_input(config, name), clips=clips,
                                           crops=crops))
    video = np.concatenate([b["video"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert video.shape[1] == clips * crops and (~mask).sum() == 1  # One padding row.
    logits = np.mean([np.asarray(apply(video[:, v])) for v in range(video.shape[1])], axis=0)
    want = hand_metrics(logits[mask].astype(np.float64), labels)
    video_logits[name] = logits[mask]
    got = results[name]
    assert 0 < got["top1"] < 1 and got["top5"] > got["top1"], name  # Non-degenerate.
    assert got["num_videos"] == NUM_VAL
    assert got["top1"] == pytest.approx(want["top1"]), name
    assert got["top5"] == pytest.approx(want["top5"]), name
    assert got["mean_class_accuracy"] == pytest.approx(want["mean_class"]), name

  summary = json.loads((workdir / "eval_val_2x3_step12.json").read_text())
  assert summary["step"] == 12 and summary["num_videos"] == NUM_VAL
  assert summary["protocol"] == dict(clips=CLIPS, crops=CROPS, checkpoint="best")
  assert summary["top1"] == pytest.approx(results["val_2x3"]["top1"])
  assert np.sum(summary["confusion"]) == NUM_VAL
  assert _png(workdir / "eval_val_2x3_step12_confusion.png").text["num_classes"] == str(DATA_K)
  lines = (workdir / "eval_val_1x1_step12_predictions.jsonl").read_text().splitlines()
  assert sorted(json.loads(line)["index"] for line in lines) == list(range(NUM_VAL))
  # The score file an ensemble reads: every class's logit and the record ids, per video.
  saved = scores.read_scores(scores.score_file(str(workdir), "val_2x3"))
  np.testing.assert_array_equal(saved["index"], np.arange(NUM_VAL))
  assert saved["video_id"] == [f"v{v}" for v in range(NUM_VAL)]
  np.testing.assert_allclose(saved["logits"], video_logits["val_2x3"], rtol=1e-5, atol=1e-5)

  # The train loop's EvalFn: scalars of the cheapest protocol, with one eval step per run.
  built = []
  make_eval_step = steps_lib.make_eval_step
  monkeypatch.setattr(steps_lib, "make_eval_step",
                      lambda *a: built.append(a) or make_eval_step(*a))
  validate = evaluate.make_validator(config, model, mesh1)
  for step in (12, 14):
    scalars = validate(types.SimpleNamespace(**variables), step)
    assert scalars["top1"] == pytest.approx(results["val_1x1"]["top1"])
    assert scalars["num_videos"] == NUM_VAL and "confusion" not in scalars
  assert len(built) == 1
  # --mode train_and_eval: validation and the final evaluation share one step per protocol.
  steps = protocols.EvalSteps(config, model)
  evaluate.make_validator(config, model, mesh1, steps)(types.SimpleNamespace(**variables), 12)
  experiment.evaluate_checkpoint(config, str(workdir), protocol="val_1x1", mesh=mesh1,
                                 steps=steps)
  assert len(built) == 2


@pytest.mark.parametrize("dataset", ["sthv1", "sthv2", "k400", "ucf101"])
def test_dataset_protocols_split_their_views_into_small_calls(dataset):
  """Every multi-view protocol of a dataset config makes model calls of at most 3 views of a
  batch: all 30 views of 8 videos per chip at once need 66 GB on a 16 GB TPU v5e at 16 frames
  (docs/benchmarks.md), and a views_per_step that does not divide the views fails at trace time."""
  config = importlib.import_module(f"configs.{dataset}").get_config("model=fstfl,frames=16")
  for name in config.evals:
    clips, crops = protocols.protocol_views(config, name)
    per_call = config.evals[name].get("views_per_step") or clips * crops
    assert (clips * crops) % per_call == 0, name
    assert per_call <= 3, name

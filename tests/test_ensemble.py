"""The ensemble of saved score files against numbers worked out by hand."""

import json
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from fstfl_jax.apps import ensemble
from fstfl_jax.evaluation import scores
from fstfl_jax.tools import model_info

# Two members, 4 videos, 3 classes. Video 0 is where the two averages disagree:
#   softmax: A [.8808 .1192 .0000] + B [.0000 .7311 .2689] -> [.4404 .4251 .1345]: class 0 (right)
#   logits:  ([2 0 -10] + [-10 1 0]) / 2 = [-4 .5 -5]: class 1 (wrong)
# Video 1: both say 1 (right). Video 2: both say 2 (wrong). Video 3: A says 2, B says 0;
#   softmax [.3412 .1592 .4996], logits [.5 0 1]: both class 2 (right).
LABELS = [0, 1, 1, 2]
LOGITS_A = [[2, 0, -10], [0, 3, 0], [0, 0, 4], [0, 0, 2]]
LOGITS_B = [[-10, 1, 0], [0, 3, 0], [0, 0, 4], [1, 0, 0]]


def write_scores(workdir, logits, labels=LABELS, step=100, ids=None, protocol="val_1x1"):
  workdir.mkdir(parents=True, exist_ok=True)
  logits = np.asarray(logits, np.float64)
  ids = ids or [f"video{i}" for i in range(len(labels))]
  rows = scores.prediction_rows(logits, np.asarray(labels), np.arange(len(labels)),
                                np.ones(len(labels), bool), ids)
  path = workdir / f"eval_{protocol}_step{step}_predictions.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # Any order.
  return path


@pytest.fixture()
def members(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  write_scores(a, LOGITS_A)
  write_scores(b, LOGITS_B)
  return str(a), str(b)


def test_softmax_average_by_hand(members):
  got = ensemble.ensemble(members, "val_1x1", with_cost=False)
  assert got["top1"] == 0.75 and got["top5"] == 1.0  # Videos 0, 1, 3 right; K=3 < 5.
  assert got["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
  assert got["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
  # -log of the averaged label probabilities .4404, e^3/(e^3+2) = .9094, 1/(2+e^4) = .01767, .4996.
  assert got["loss"] == pytest.approx(-np.mean(np.log([.44040, .90944, .017668, .49960])),
                                      abs=2e-4)
  assert got["num_videos"] == 4


def test_logit_average_by_hand(members):
  got = ensemble.ensemble(members, "val_1x1", average="logits", with_cost=False)
  assert got["top1"] == 0.5  # Video 0 now goes to class 1.
  assert got["mean_class_accuracy"] == pytest.approx((0 + 0.5 + 1) / 3)
  assert got["confusion"] == [[0, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_weights_select_a_member(members):
  only_a = ensemble.ensemble(members, "val_1x1", weights=[1, 0], with_cost=False)
  only_b = ensemble.ensemble(members, "val_1x1", weights=[0, 2], with_cost=False)
  assert only_a["top1"] == 0.75  # A predicts 0, 1, 2, 2.
  assert only_b["top1"] == 0.25  # B predicts 1, 1, 2, 0.
  with pytest.raises(ValueError, match="non-negative values with a positive sum"):
    ensemble.combine([np.zeros((1, 3))] * 2, [1, -1])


def test_newest_step_is_used(members, tmp_path):
  write_scores(tmp_path / "a", LOGITS_B, step=20)  # Older, and would change the result.
  assert scores.score_file(members[0], "val_1x1").name == "eval_val_1x1_step100_predictions.jsonl"
  assert ensemble.ensemble(members, "val_1x1", with_cost=False)["top1"] == 0.75


def test_mismatched_members_fail_with_one_line(tmp_path, members):
  write_scores(tmp_path / "labels", LOGITS_B, labels=[0, 1, 2, 2])
  write_scores(tmp_path / "videos", LOGITS_B[:3], labels=LABELS[:3])
  write_scores(tmp_path / "classes", np.zeros((4, 5)))
  write_scores(tmp_path / "ids", LOGITS_B, ids=["video0", "other", "video2", "video3"])
  cases = {"labels": "disagree on the label of video index 2",
           "videos": "cover different videos", "classes": "scores 5 classes",
           "ids": "differ at video index 1: video_id 'other'"}
  for name, message in cases.items():
    with pytest.raises(ValueError, match=message) as e:
      ensemble.ensemble([members[0], str(tmp_path / name)], "val_1x1", with_cost=False)
    assert "\n" not in str(e.value)
  with pytest.raises(FileNotFoundError, match="--eval_predictions"):
    ensemble.ensemble([members[0], str(tmp_path / "none")], "val_1x1", with_cost=False)
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "eval_val_1x1_step1_predictions.jsonl").write_text(
    json.dumps(dict(index=0, label=0, top5=[0])) + "\n")
  with pytest.raises(ValueError, match="line 1: no 'logits'"):
    ensemble.ensemble([members[0], str(tmp_path / "old")], "val_1x1", with_cost=False)


def test_cost_is_the_sum_of_the_members(tmp_path):
  """8f + 16f, as in the paper's ensemble row: params add up, and so do the GMACs."""
  dirs = []
  for frames in (8, 16):
    config = demo.get_config(f"frames={frames}")
    workdir = tmp_path / f"f{frames}"
    write_scores(workdir, LOGITS_A)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1, sort_keys=True))
    dirs.append(str(workdir))
  got = ensemble.ensemble(dirs, "val_1x1")
  configs = [demo.get_config(f"frames={f}") for f in (8, 16)]
  want = [model_info.model_info(c.model, c.input.crop_size) for c in configs]
  assert got["params"] == want[0]["params"] + want[1]["params"] == 2 * want[0]["params"]
  assert got["gmacs"] == pytest.approx(want[0]["gflops"] + want[1]["gflops"])
  assert want[1]["gflops"] > 1.9 * want[0]["gflops"]
  assert [m["num_frames"] for m in got["members"]] == [8, 16]


def test_command_line_writes_json(members, tmp_path):
  out = tmp_path / "out" / "ens.json"
  proc = subprocess.run(
    [sys.executable, "-m", "fstfl_jax.apps.ensemble", f"--workdirs={','.join(members)}",
     "--protocol=val_1x1", "--average=logits", "--nocost", f"--json={out}"],
    capture_output=True, text=True, check=True)
  assert "top-1 50.00%" in proc.stdout
  got = json.loads(out.read_text())
  assert got["top1"] == 0.5 and got["protocol"]["average"] == "logits"

"""`python -m benchmarks.accelerator --tiny` on the CPU: the command a first accelerator runs.

A subprocess with 2 CPU devices and XLA's cheap compile options, as `test_cli` runs commands.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import xla_env
from benchmarks import accelerator
from fstfl_jax.tools import roofline

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_tiny_run_reports_every_measurement(tmp_path):
  out = tmp_path / "accelerator.json"
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(2), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--tiny", "--models",
                         "fstfl", "--steps", "2", "--input_batches", "2", "--json", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert (report["backend"], report["devices"], report["tiny"]) == ("cpu", 2, True)
  step = report["models"]["fstfl"]
  assert step["per_device_batch"] == 1 and step["global_batch"] == 2
  assert step["step_seconds"] > 0
  assert step["clips_per_second"] == pytest.approx(2 / step["step_seconds"])
  assert step["peak_memory_bytes"] > 0 and step["peak_memory_source"] == "compiler"
  assert step["flops_per_device_step"] > 0 and step["mfu"] is None  # No known CPU peak.
  assert [r["impl"] for r in report["correlation"]] == ["allpairs", "banded", "einsum"]
  assert all(r["time_ms"] > 0 for r in report["correlation"])
  inputs = report["input_pipeline"]
  assert inputs["clips_per_second"] > 0
  assert inputs["input_keeps_up"] == (inputs["clips_per_second"]
                                      >= inputs["step_clips_per_second"])
  assert "fstfl: 1 clips/device" in proc.stdout and "input pipeline:" in proc.stdout


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


def test_chip_peaks_come_from_the_roofline_table():
  assert accelerator.chip(_Device("TPU v5 lite")) == roofline.CHIPS["v5e"]
  assert accelerator.chip(_Device("TPU v6 lite")) == roofline.CHIPS["v6e"]
  assert accelerator.chip(_Device("NVIDIA H100 80GB HBM3")) == roofline.CHIPS["h100"]
  assert accelerator.chip(_Device("NVIDIA A100-SXM4-40GB")) == roofline.CHIPS["a100-40gb"]
  assert accelerator.chip(_Device("cpu")) is None

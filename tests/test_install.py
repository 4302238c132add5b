"""The package installs with pip and its console scripts work from any directory."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def _model_info(command: list[str], cwd, env=None) -> dict:
  proc = subprocess.run([*command, "--config", "configs/demo.py", "--json"], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)


def test_console_script_runs_outside_the_checkout(tmp_path):
  """`scripts/setup.sh` installs the project (editable); the configs come from the package."""
  via_script = _model_info([str(BIN / "fstfl-model-info")], cwd=tmp_path)
  in_repo = _model_info([sys.executable, "-m", "fstfl_jax.tools.model_info"], cwd=ROOT)
  assert via_script == in_repo
  assert not list(tmp_path.iterdir())
  for name in ("fstfl-train", "fstfl-build", "fstfl-copy-data", "fstfl-predict", "fstfl-gradcam",
               "fstfl-make-demo", "fstfl-convert-weights"):
    assert (BIN / name).exists(), name


def test_non_editable_install_carries_every_package(tmp_path):
  # A copy of the tracked files: the build leaves build/ and *.egg-info/ in its source tree.
  tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
  source = tmp_path / "source"
  for name in tracked:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / name, source / name)
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(source)], check=True, capture_output=True, timeout=600)
  installed = {p.name for p in target.iterdir()}
  assert {"fstfl_jax", "data_pipelines", "configs"} <= installed
  assert (target / "configs" / "sthv1.py").exists()
  assert (target / "fstfl_jax" / "models" / "stc.py").exists()
  env = dict(os.environ, PYTHONPATH=str(target))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  info = _model_info([str(target / "bin" / "fstfl-model-info")], cwd=cwd, env=env)
  assert info == _model_info([sys.executable, "-m", "fstfl_jax.tools.model_info"], cwd=ROOT)
  where = subprocess.run([sys.executable, "-c", "import fstfl_jax; print(fstfl_jax.__file__)"],
                         cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout
  assert where.startswith(str(target))

"""fstfl_jax.cli: configs found outside a checkout, quiet library logs, one-line FATAL errors."""

import logging
import os
import pathlib

import pytest

from fstfl_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_configs_resolve_to_the_package_outside_a_checkout(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  spec = cli.installed_config("configs/sthv1.py:model=gsf,frames=16")
  path, _, variants = spec.partition(":")
  assert variants == "model=gsf,frames=16"
  assert os.path.samefile(path, ROOT / "configs" / "sthv1.py")
  assert cli.resolve_config_args(["prog", "--config", "configs/demo.py", "--x=1"])[2] == (
    cli.installed_config("configs/demo.py"))
  assert cli.resolve_config_args(["prog", "--config=configs/demo.py"])[1] == (
    "--config=" + cli.installed_config("configs/demo.py"))
  # Other paths, and names the package does not have, are left for the flag to report.
  assert cli.installed_config("my/own.py:x") == "my/own.py:x"
  assert cli.installed_config("configs/nope.py") == "configs/nope.py"


def test_configs_in_the_working_directory_win(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "demo.py").write_text("")
  assert cli.installed_config("configs/demo.py") == "configs/demo.py"


def _record(pathname: str, level: int, msg: str) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, None, None)


def test_filter_keeps_own_info_and_library_warnings_only():
  own = str(ROOT / "fstfl_jax" / "train.py")
  lib = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  keep = cli._FILTER.filter  # pylint: disable=protected-access
  assert keep(_record(own, logging.INFO, "train step 1/10"))
  assert not keep(_record(lib, logging.INFO, "Saving checkpoint"))
  assert keep(_record(lib, logging.WARNING, "disk almost full"))
  assert not keep(_record(lib, logging.WARNING, cli._EXPECTED_WARNINGS[0]))  # pylint: disable=protected-access


def test_user_errors_end_in_one_fatal_line(capsys):
  def main(argv):
    raise cli.UserError("data dir x: no such\n  directory")

  with pytest.raises(SystemExit) as e:
    cli.run_main(lambda: main([]))
  assert e.value.code == cli.FATAL_STATUS
  assert capsys.readouterr().err == "FATAL: data dir x: no such directory\n"


def _define(fv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A directory.", flag_values=fv, required=True)
  flags.DEFINE_multi_string("video", [], "Repeatable.", flag_values=fv)
  flags.DEFINE_integer("topk", 5, "Positive.", lower_bound=1, flag_values=fv)


def test_tool_flags_use_absl_syntax_and_fail_in_one_line(capsys):
  args = cli.parse_tool_flags(["--workdir=w", "--video", "a", "--video=b"], _define, prog="tool",
                              doc="Tool.")
  assert (args.workdir, args.video, args.topk) == ("w", ["a", "b"], 5)
  # The same names in another tool's registry do not clash.
  assert cli.parse_tool_flags(["--workdir", "x"], _define, prog="other", doc="").workdir == "x"
  for argv, expected in (([], "--workdir must have a value"), (["--workdir=w", "--topk=0"], "topk"),
                         (["--workdir=w", "stray"], "unexpected arguments ['stray']"),
                         (["--workdir=w", "--top-k=1"], "top-k")):
    with pytest.raises(SystemExit) as err:
      cli.parse_tool_flags(argv, _define, prog="tool", doc="Tool.")
    assert err.value.code == cli.USAGE_STATUS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tool: error: ") and expected in lines[0]
  with pytest.raises(SystemExit) as err:
    cli.parse_tool_flags(["--help"], _define, prog="tool", doc="Tool.")
  assert err.value.code == 0 and "--workdir" in capsys.readouterr().out

"""data_pipelines.cli: configs found outside a checkout, quiet library logs, one-line errors."""

import importlib
import logging
import os
import pathlib
import tomllib

import pytest

from data_pipelines import cli

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


def test_user_errors_end_in_one_error_line(capsys):
  def main(argv):
    raise cli.UserError("data dir x: no such\n  directory")

  with pytest.raises(SystemExit) as e:
    cli.run_main(lambda: main([]), "tool")
  assert e.value.code == cli.ERROR_STATUS
  assert capsys.readouterr().err == "tool: error: data dir x: no such directory\n"


def _define(fv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A directory.", flag_values=fv, required=True)
  flags.DEFINE_multi_string("video", [], "Repeatable.", flag_values=fv)
  flags.DEFINE_integer("topk", 5, "Positive.", lower_bound=1, flag_values=fv)


def test_tool_flags_use_absl_syntax_and_fail_in_one_line(capsys):
  args = cli.parse_flags(["--workdir=w", "--video", "a", "--video=b"], _define, prog="tool",
                              doc="Tool.")
  assert (args.workdir, args.video, args.topk) == ("w", ["a", "b"], 5)
  # The same names in another tool's registry do not clash.
  assert cli.parse_flags(["--workdir", "x"], _define, prog="other", doc="").workdir == "x"
  for argv, expected in (([], "--workdir must have a value"), (["--workdir=w", "--topk=0"], "topk"),
                         (["--workdir=w", "stray"], "unexpected arguments ['stray']"),
                         (["--workdir=w", "--top-k=1"], "top-k")):
    with pytest.raises(SystemExit) as err:
      cli.parse_flags(argv, _define, prog="tool", doc="Tool.")
    assert err.value.code == cli.USAGE_STATUS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tool: error: ") and expected in lines[0]
  with pytest.raises(SystemExit) as err:
    cli.parse_flags(["--help"], _define, prog="tool", doc="Tool.")
  assert err.value.code == 0 and "--workdir" in capsys.readouterr().out


def _console_scripts() -> dict[str, str]:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(_console_scripts()))
def test_every_console_script_has_help_and_one_error_style(name, capsys):
  module = importlib.import_module(_console_scripts()[name].partition(":")[0])
  assert module.PROG == name
  with pytest.raises(SystemExit) as e:
    module.main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and "flags:" in out and "--verbosity" in out
  with pytest.raises(SystemExit) as e:
    module.main(["--no_such_flag=1"])
  lines = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == cli.USAGE_STATUS
  assert len(lines) == 1 and lines[0].startswith(f"{name}: error: ") and "no_such_flag" in lines[0]


def test_a_mistyped_config_key_is_one_clean_line(tmp_path, capsys):
  from fstfl_jax import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    main.main(["--config", "configs/demo.py", "--config.optim.base_lrr=0.1",
               "--workdir", str(tmp_path / "wd")])
  assert e.value.code == cli.USAGE_STATUS
  assert capsys.readouterr().err == (
    "fstfl-train: error: unknown config key 'optim.base_lrr' (--config.optim.base_lrr=0.1); "
    "did you mean 'optim.base_lr'?\n")
  assert not (tmp_path / "wd").exists()

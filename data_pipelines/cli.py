"""The command line of every console script: absl flags, quiet library logs, one-line errors.

Every command (`fstfl-train`, `fstfl-build`, `fstfl-predict`, ...) is a module with

  define_flags(fv)            its flags, on a private `flags.FlagValues` registry
  main(argv=None) -> int      parses with `parse_flags(argv, define_flags, prog=..., doc=...)`,
                              does the work, returns the exit status
  run()                       the console entry: `run_main(main, prog)`

so the same names (`--workdir`, `--config`) in two commands never clash, and a test can call
`main([...])` in-process as often as it likes. The syntax is absl's everywhere (`--name=value` or
`--name value`, `--flag` / `--noflag`, underscores, a repeated flag for several values), and
every command takes `--help` and `--verbosity`.

Errors are one line on stderr, `<prog>: error: <what was expected and how to fix it>`:
exit status 2 for a bad command line (unknown flag, missing value, unknown `--config.<key>`), 1
for a mistake found while running (`UserError`: a missing data dir, a config that does not fit
its data). Anything else is a bug and keeps its traceback.

Library INFO logs (Orbax, TFDS, JAX, gcsfs, ...) are dropped unless `--verbosity=1` or more; this
project's own INFO lines and every warning stay. `--config configs/<name>.py[:variants]` also
works outside a checkout: when the path does not exist under the working directory, the
installed `configs` package is searched (`pip install` ships it).

This module lives in `data_pipelines`, the bottom layer, because the data tools (`fstfl-build`,
`fstfl-copy-data`, the Beam build on workers without JAX) need it as much as the training side.
"""

import importlib.util
import logging as py_logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import flags
from absl import logging

_OWN_PACKAGES = ("fstfl_jax", "data_pipelines", "configs", "benchmarks")
# Search locations rather than `origin`: `benchmarks` is a namespace package (no __init__.py).
_OWN_DIRS = tuple(
  os.path.abspath(d) + os.sep
  for spec in (importlib.util.find_spec(p) for p in _OWN_PACKAGES) if spec
  for d in spec.submodule_search_locations or ())
ERROR_STATUS = 1  # A mistake of the user's, found while running.
USAGE_STATUS = 2  # A bad command line.


class UserError(Exception):
  """A problem the user can fix; the message says what was expected and how to fix it."""


def one_line(message: str) -> str:
  return " ".join(str(message).split())


def print_error(prog: str, message: str) -> None:
  """`<prog>: error: <message>` on one line of stderr (a command that goes on, or stops)."""
  print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def error_exit(prog: str, message: str, status: int) -> NoReturn:
  print_error(prog, message)
  sys.exit(status)


def usage_error(prog: str, message: str) -> NoReturn:
  """A bad command line: `<prog>: error: <message>` on one line, exit status `USAGE_STATUS`."""
  error_exit(prog, message, USAGE_STATUS)


def installed_config(spec: str) -> str:
  """`configs/x.py[:variants]` -> the installed package's file when it is not in the cwd."""
  file, sep, variants = spec.partition(":")
  if os.path.exists(file) or os.path.dirname(os.path.normpath(file)) != "configs":
    return spec
  package = importlib.util.find_spec("configs")
  if package is None or not package.submodule_search_locations:
    return spec
  candidate = os.path.join(list(package.submodule_search_locations)[0], os.path.basename(file))
  return candidate + sep + variants if os.path.exists(candidate) else spec


def resolve_config_args(argv: Sequence[str], name: str = "config") -> list[str]:
  """argv with `--config X` / `--config=X` pointed at the installed configs where needed."""
  out, take_next = [], False
  for arg in argv:
    if take_next:
      arg, take_next = installed_config(arg), False
    elif arg == f"--{name}":
      take_next = True
    elif arg.startswith(f"--{name}="):
      arg = f"--{name}=" + installed_config(arg.partition("=")[2])
    out.append(arg)
  return out


def define_config_flag(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  """The required, locked `--config path.py[:variants]` flag, with `--config.<key>=value`
  overrides for the keys named in `argv`."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/sthv1.py:frames=8 (configs/ is also found in the "
    "installed package); override a key with --config.<key>=value.", flag_values=fv,
    lock_config=True, sys_argv=list(argv))
  flags.mark_flag_as_required("config", flag_values=fv)


_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def _unknown_key(error: Exception, argv: Sequence[str]) -> str:
  """The one-line message for a `--config.<key>` override the locked config does not have."""
  text = str(error)
  leaf = text.strip("\"'\\").split("'")[0].split("\\")[0].strip("\"'")
  culprit = next((a for a in argv if a.startswith("--config.")
                  and a.partition("=")[0].split(".")[-1] == leaf), None)
  key = culprit.partition("=")[0].removeprefix("--config.") if culprit else leaf
  hint = _DID_YOU_MEAN.search(text)
  fix = (f"did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{hint[1]}'?"
         if hint else "--config.<key>=value can only override keys the config file defines.")
  return f"unknown config key '{key}' ({culprit or 'a --config override'}); {fix}"


def parse_flags(argv: Sequence[str] | None, define: Callable[[flags.FlagValues], None], *,
                prog: str, doc: str, config: bool = False) -> flags.FlagValues:
  """Parses `argv` (default `sys.argv[1:]`) into a new registry with `define`'s flags.

  `config=True` adds the locked `--config` flag (`define_config_flag`). `--help` prints `doc`
  and the flags and exits 0; a bad, missing or positional argument exits via `usage_error`.
  Logging is set up for the parsed `--verbosity` (`setup_logging`).
  """
  argv = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
  values = flags.FlagValues()
  define(values)
  flags.DEFINE_integer("verbosity", 0, "0: this project's INFO logs and every warning; 1 and "
                       "more: the libraries' INFO logs too.", short_name="v", flag_values=values)
  if config:
    define_config_flag(values, [prog] + argv)
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
    print(f"{doc.strip()}\n\nflags:\n{values.get_help(include_special_flags=False)}")
    sys.exit(0)
  try:
    rest = values([prog] + argv)
  except (AttributeError, KeyError) as e:  # A --config.<key> the locked config lacks.
    usage_error(prog, _unknown_key(e, argv))
  except (flags.Error, ValueError, OSError) as e:
    message = str(e).strip()
    if "Traceback (most recent call last)" in message:  # The config file itself raised.
      message = f"--config: {message.splitlines()[-1]}"
    usage_error(prog, message)
  if len(rest) > 1:
    usage_error(prog, f"unexpected arguments {rest[1:]}; every argument is a --flag")
  setup_logging(values.verbosity)
  return values


# Beginnings of library warnings about choices this project makes on purpose: Orbax's, when a
# step without eval metrics is saved next to steps ranked by validation top-1 (one per
# checkpoint), and when evaluation opens the checkpoints read-only.
_EXPECTED_WARNINGS = ("Requested `tracked_metric`; did not provide metrics.",
                      "Given directory is read only=",
                      "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.")


class _QuietThirdParty(py_logging.Filter):
  """Drops INFO/DEBUG records and expected warnings logged outside this project's packages."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.pathname.startswith(_OWN_DIRS):
      return True
    return (record.levelno >= py_logging.WARNING
            and not record.getMessage().startswith(_EXPECTED_WARNINGS))


_FILTER = _QuietThirdParty()


def setup_logging(verbosity: int = 0) -> None:
  """absl's handler on stderr at `verbosity`, with library INFO logs dropped below 1."""
  logging.use_absl_handler()
  logging.set_verbosity(verbosity)
  handler = logging.get_absl_handler()
  if verbosity >= 1:
    handler.removeFilter(_FILTER)
    return
  handler.addFilter(_FILTER)
  # Libraries that log through their own handlers rather than the root's.
  for name in ("jax", "orbax", "tensorflow_datasets", "gcsfs", "google", "grain",
               "matplotlib", "urllib3", "absl.flags"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def run_main(main: Callable[[], int | None], prog: str) -> NoReturn:
  """Runs a console script's `main()`; a `UserError` ends in one error line, exit status 1."""
  # Grain reads absl's global flags, which these commands never parse.
  flags.FLAGS.mark_as_parsed()
  try:
    status = main()
  except UserError as e:
    error_exit(prog, str(e), ERROR_STATUS)
  sys.exit(status or 0)


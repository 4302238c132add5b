"""What every command-line entry point shares: config lookup, quiet logs, one-line errors.

- `--config configs/<name>.py[:variants]` also works outside a repository checkout: when the
  path does not exist relative to the working directory, the installed `configs` package is
  searched (`pip install` ships it).
- Third-party INFO logs (Orbax, TFDS, JAX, gcsfs, ...) are dropped unless `--verbosity=1`
  (`-v 1`) or higher; this project's own INFO lines and everyone's warnings stay.
- A mistake of the user's ends in one `FATAL:` line with the fix and exit status 1, not a
  traceback (`UserError`, or `fatal`).
"""

import importlib.util
import logging as py_logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import flags
from absl import logging
from ml_collections import config_flags

_OWN_PACKAGES = ("fstfl_jax", "data_pipelines", "configs", "benchmarks")
_OWN_DIRS = tuple(
  os.path.dirname(os.path.abspath(spec.origin)) + os.sep
  for spec in (importlib.util.find_spec(p) for p in _OWN_PACKAGES) if spec and spec.origin)
FATAL_STATUS = 1


class UserError(Exception):
  """A problem the user can fix; the message says what was expected and how to fix it."""


def fatal(message: str) -> NoReturn:
  print(f"FATAL: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(FATAL_STATUS)


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


def quiet_third_party_logs() -> None:
  """Installs the filter on absl's handler unless --verbosity >= 1 asked for everything."""
  handler = logging.get_absl_handler()
  if logging.get_verbosity() >= 1:
    handler.removeFilter(_FILTER)
    return
  handler.addFilter(_FILTER)
  # Libraries that log through their own handlers rather than the root's.
  for name in ("jax", "orbax", "tensorflow_datasets", "gcsfs", "google", "grain",
               "matplotlib", "urllib3", "absl.flags"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def define_config_flag() -> flags.FlagHolder:
  """The required, locked `--config path.py[:variants]` flag every config-driven tool takes."""
  holder = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/sthv1.py:frames=8 (configs/ is also found in the "
    "installed package).", lock_config=True)
  flags.mark_flags_as_required(["config"])
  return holder


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with configs found when installed, and one-line errors for bad flags."""
  argv = resolve_config_args(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # A --config.<key> override the config lacks.
    key = str(e).strip("\"'")
    culprit = [a for a in argv if a.startswith("--config.") and key in a.partition("=")[0]]
    fatal(f"unknown config key {key!r} in {culprit or argv[1:]}: the config is locked, so "
          "--config.<path>=value can only override keys the config file defines.")
  except (flags.Error, ValueError) as e:
    message = str(e).strip()
    if "Traceback (most recent call last)" in message:  # The config file itself raised.
      message = f"--config: {message.splitlines()[-1]}"
    fatal(f"{message} (see --helpfull for the flags)")


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with this module's flag parsing, quiet logs and FATAL lines."""
  from absl import app  # pylint: disable=g-import-not-at-top

  def wrapped(argv: list[str]) -> None:
    quiet_third_party_logs()
    try:
      main(argv)
    except UserError as e:
      fatal(str(e))

  app.run(wrapped, flags_parser=parse_flags)


USAGE_STATUS = 2  # Exit status of a bad command line.


def parse_tool_flags(argv: Sequence[str] | None, define: Callable[[flags.FlagValues], None], *,
                     prog: str, doc: str) -> flags.FlagValues:
  """absl flags of one tool, parsed from `argv` (default `sys.argv[1:]`) into its own registry.

  The tools import one another (gradcam uses predict's helpers, tests import them all), so
  each defines its flags in `define(flag_values)` on a private `flags.FlagValues` instead of
  absl's global one, where the same name (--workdir, --config) would clash; the syntax is
  absl's everywhere (`--name=value` or `--name value`, `--flag`/`--noflag`, underscores).
  `--help` prints `doc` and the flags and exits 0; a bad, missing or positional argument
  prints `<prog>: error: ...` and exits `USAGE_STATUS`.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  values = flags.FlagValues()
  define(values)
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
    print(f"{doc.strip()}\n\nflags:\n{values.get_help(include_special_flags=False)}")
    sys.exit(0)
  try:
    rest = values([prog] + argv)
    if len(rest) > 1:
      raise flags.Error(f"unexpected arguments {rest[1:]}; every argument is a --flag")
  except flags.Error as e:
    usage_error(prog, str(e))
  return values


def usage_error(prog: str, message: str) -> NoReturn:
  """A bad command line: `<prog>: error: <message>` on one line, exit status `USAGE_STATUS`."""
  print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_STATUS)


def run_main(main: Callable[[], int]) -> NoReturn:
  """Runs a `main() -> exit status` (flags from `parse_tool_flags`) with quiet logs and FATAL
  lines."""
  quiet_third_party_logs()
  try:
    status = main()
  except UserError as e:
    fatal(str(e))
  sys.exit(status)

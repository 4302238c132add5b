"""The layout is the architecture: imports run one way and no module grows past one screenful.

Read from the source with `ast` (every import, also those inside functions), nothing is run:

- no import cycle between files;
- `data_pipelines` (the bottom layer: storage, the command line, shards, the input pipeline; it
  runs on Beam workers without JAX) never imports `fstfl_jax`; `configs` imports neither;
- inside `fstfl_jax` the folders are layers, each importing only itself and those below:
  models < training < evaluation < tools < apps < main;
- no module of the three packages is longer than `MAX_LINES`.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("configs", "data_pipelines", "fstfl_jax", "benchmarks")
LAYERS = ("fstfl_jax.models", "fstfl_jax.training", "fstfl_jax.evaluation", "fstfl_jax.tools",
          "fstfl_jax.apps", "fstfl_jax.main")
MAX_LINES = 400


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the project's packages."""
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = path.relative_to(ROOT).with_suffix("").parts
      name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      out[name] = path
  return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """The project modules `name` imports (a `from a import b` of a module b counts as a.b)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                 for alias in node.names]
    else:
      continue
    for target in targets:
      while target and target not in MODULES:
        target = target.rpartition(".")[0]
      if target and target != name:
        found.add(target)
  return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int | None:
  for i, layer in enumerate(LAYERS):
    if name == layer or name.startswith(layer + "."):
      return i
  return None


def test_the_graph_was_read():
  # Guards the test itself: known edges must be found.
  assert "data_pipelines.records.schema" in GRAPH["data_pipelines.records.reading"]
  assert "fstfl_jax.training.train" in GRAPH["fstfl_jax.apps.experiment"]
  assert len(MODULES) > 60


def test_no_import_cycle_between_files():
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  path: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(GRAPH[node]):
      if state.get(nxt) == 1:
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = 2

  for node in sorted(GRAPH):
    if node not in state:
      visit(node)


@pytest.mark.parametrize("lower, upper", [("data_pipelines", "fstfl_jax"),
                                          ("data_pipelines", "benchmarks"),
                                          ("configs", "fstfl_jax"),
                                          ("configs", "data_pipelines"),
                                          ("fstfl_jax", "benchmarks")])
def test_packages_import_one_way(lower, upper):
  wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if a.split(".")[0] == lower
                 for b in targets if b.split(".")[0] == upper)
  assert not wrong, wrong


def test_fstfl_jax_folders_are_layers():
  wrong = []
  for a, targets in GRAPH.items():
    la = _layer(a)
    if la is None:
      continue
    wrong += [f"{a} -> {b}" for b in targets if (lb := _layer(b)) is not None and lb > la]
  assert not wrong, wrong
  assert {_layer(m) for m in MODULES if m.startswith("fstfl_jax.")} >= set(range(len(LAYERS)))


def test_modules_fit_one_screenful():
  long = {name: n for name, path in MODULES.items()
          if (n := len(path.read_text().splitlines())) > MAX_LINES}
  assert not long, long

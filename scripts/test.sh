#!/usr/bin/env bash
# Sets up the environment and runs the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
# Two test processes (pytest-xdist), one per core of a CI machine; a file stays on one process,
# so its module fixtures are built once.
.venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
# The GPU compile check with XLA's CUDA compiler plugin (requirements-cuda-aot.txt), installed
# in .venv/cuda-aot off .venv's path: without a GPU the plugin prints "Could not find cuda
# drivers" in every JAX process that can import it, so only this run gets it (PYTHONPATH).
if ! cmp -s requirements-cuda-aot.txt .venv/cuda-aot/requirements-cuda-aot.txt; then
  rm -rf .venv/cuda-aot
  .venv/bin/python -m pip install -q --no-deps --target .venv/cuda-aot -r requirements-cuda-aot.txt
  cp requirements-cuda-aot.txt .venv/cuda-aot/
fi
PYTHONPATH=.venv/cuda-aot .venv/bin/python -m pytest -q tests/gpu_aot_check.py
# The Apache Beam build in its own venv: apache-beam pins numpy and protobuf below
# requirements.txt (requirements-beam.txt).
PY=${PYTHON:-python3}
[ -x .venv-beam/bin/python ] || "$PY" -m venv .venv-beam
.venv-beam/bin/python -m pip install -q --upgrade pip
.venv-beam/bin/python -m pip install -q -r requirements-beam-test.txt
.venv-beam/bin/python -m pip install -q --no-deps -e .
.venv-beam/bin/python -m pytest -q tests_beam

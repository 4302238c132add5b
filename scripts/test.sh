#!/usr/bin/env bash
# Sets up the environment and runs the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/python -m pytest -q tests "$@"
# The Apache Beam build in its own venv: apache-beam pins numpy and protobuf below
# requirements.txt (requirements-beam.txt).
PY=${PYTHON:-python3}
[ -x .venv-beam/bin/python ] || "$PY" -m venv .venv-beam
.venv-beam/bin/python -m pip install -q --upgrade pip
.venv-beam/bin/python -m pip install -q -r requirements-beam-test.txt
.venv-beam/bin/python -m pip install -q --no-deps -e .
.venv-beam/bin/python -m pytest -q tests_beam

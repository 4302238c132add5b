#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies (add "test" for the test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# The project itself, editable, with its console scripts (fstfl-train, fstfl-predict, ...).
.venv/bin/python -m pip install -q --no-deps -e .
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
fi

#!/usr/bin/env bash
# Sets up the environment and runs the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
.venv/bin/python -m pytest -q tests "$@"

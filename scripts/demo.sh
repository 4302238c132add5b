#!/usr/bin/env bash
# The main job on a fresh machine: set up, build the offline demo dataset, train the demo
# FSTFL-Net, evaluate its checkpoint and print top-1/top-5. Extra args go to fstfl_jax.main.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m data_pipelines.make_demo --out demo_data
.venv/bin/python -m fstfl_jax.main --config configs/demo.py --workdir workdirs/demo \
  --mode train_and_eval "$@"

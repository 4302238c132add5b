#!/usr/bin/env bash
# The main job on a fresh machine: set up, build the offline demo dataset, train the demo
# FSTFL-Net, evaluate its checkpoint and print top-1/top-5, then the range of top-1 that a correct
# install prints (measured over seeds, configs/demo.py). Extra args go to fstfl_jax.main.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The demo venv is CPU-only (requirements.txt). After scripts/test.sh it also holds libtpu (for
# the TPU compile test), which would probe for a TPU at start-up and print libtpu warnings.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
.venv/bin/python -m data_pipelines.make_demo --out demo_data
.venv/bin/python -m fstfl_jax.main --config configs/demo.py --workdir workdirs/demo \
  --mode train_and_eval "$@"
.venv/bin/python -c "from configs import demo; print(demo.expected_result())"

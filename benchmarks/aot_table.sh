#!/usr/bin/env bash
# TPU compiler estimates of the train step (bf16): v5e and v6e x 8/16 frames x tsn/gsf/fstfl.
#   benchmarks/aot_table.sh OUT_DIR [PER_CHIP_BATCH]   then   python benchmarks/aot_table.py OUT_DIR
# Each full ResNet-50 compile takes minutes on a CPU host; they run one after another.
set -euo pipefail
out=${1:?usage: aot_table.sh OUT_DIR [PER_CHIP_BATCH]}
batch=${2:-4}
mkdir -p "$out"
for model in tsn gsf fstfl; do
  for frames in 8 16; do
    for topo in v5e:2x2 v6e:2x2; do
      name="${topo%%:*}_${frames}f_${model}"
      [ -s "$out/$name.json" ] && continue
      python -m fstfl_jax.tools.aot --config "configs/sthv1.py:model=$model,frames=$frames" \
        --topology "$topo" --per_chip_batch "$batch" --eval_protocols= \
        --config.model.dtype=bfloat16 --json "$out/$name.json" > "$out/$name.txt" 2>&1 \
        || echo "$name failed (see $out/$name.txt)"
      tail -n 2 "$out/$name.txt"
    done
  done
done

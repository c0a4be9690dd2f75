#!/usr/bin/env bash
# RFSCNN's fusion readings on the synthetic preset, side by side (docs/models/rfscnn-readings.md):
# product fusion with the pre-fusion offset 1 (the default: sum + product), offset 0 (the plain product)
# and sum fusion; seeds 0-2 each, seed by seed, the three readings of a seed side by side (3 processes).
# Prints one line per run: reading, seed, test WAR / UAR; each run's log is OUT_DIR/<reading>_seed<s>.log.
#
#   scripts/rfscnn_fusion_readings.sh OUT_DIR [EPOCHS]     (EPOCHS defaults to the preset's 15)
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [EPOCHS]}
epochs=${2:-15}
mkdir -p "$out"
declare -A readings=(
  [offset1]=':synthetic'
  [offset0]=':synthetic --config.model.product_offset=0'
  [sum]=':synthetic,fusion=sum'
)
names=(offset1 offset0 sum)
for seed in 0 1 2; do
  for name in "${names[@]}"; do
    read -r arg extra <<<"${readings[$name]}"
    workdir="$out/${name}_seed$seed"
    python -m ferjax.train --config "configs/rfscnn.py${arg},seed=$seed" ${extra:-} \
        --config.train.num_epochs="$epochs" --workdir "$workdir" > "$workdir.log" 2>&1 &
  done
  wait
  for name in "${names[@]}"; do
    python - "$name" "$seed" "$out/${name}_seed$seed/report.json" <<'PY'
import json, sys
name, seed, path = sys.argv[1:]
r = json.load(open(path))
print(f'{name} seed={seed} test WAR {100 * r["war"]:.2f} % UAR {100 * r["uar"]:.2f} %', flush=True)
PY
  done
done

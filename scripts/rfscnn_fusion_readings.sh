#!/usr/bin/env bash
# RFSCNN's fusion readings on the synthetic preset, side by side (docs/models/rfscnn-readings.md):
# product fusion with the pre-fusion offset 1 (the default: sum + product), offset 0 (the plain product)
# and sum fusion; seeds 0-2 each. Prints one line per run: reading, seed, test WAR / UAR; each run's log
# is OUT_DIR/<reading>_seed<s>.log.
#
#   scripts/rfscnn_fusion_readings.sh OUT_DIR [EPOCHS] [SEEDS]
#
# EPOCHS defaults to the preset's 15, SEEDS to "0 1 2" (e.g. "2" adds a seed to an earlier series).
#
# The runs go one after the other, seed by seed (all three readings of seed 0 first), and share a
# persistent JAX compilation cache (OUT_DIR/jax_cache): the train and evaluation steps compile once per
# fusion (the offset and the seed change only initial values); the initialisation compiles per run (its
# seed and offset are constants of its program).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [EPOCHS] [SEEDS]}
epochs=${2:-15}
seeds=${3:-0 1 2}
mkdir -p "$out"
export JAX_COMPILATION_CACHE_DIR="$out/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
declare -A readings=(
  [offset1]=':synthetic'
  [offset0]=':synthetic --config.model.product_offset=0'
  [sum]=':synthetic,fusion=sum'
)

for seed in $seeds; do
  for name in offset1 offset0 sum; do
    read -r arg extra <<<"${readings[$name]}"
    run="$out/${name}_seed$seed"
    if python -m ferjax.train --config "configs/rfscnn.py${arg},seed=$seed" ${extra:-} \
        --config.train.num_epochs="$epochs" --workdir "$run" > "$run.log" 2>&1; then
      python - "$name" "$seed" "$run/report.json" <<'PY'
import json, sys
name, seed, path = sys.argv[1:]
r = json.load(open(path))
print(f'{name} seed={seed} test WAR {100 * r["war"]:.2f} % UAR {100 * r["uar"]:.2f} %', flush=True)
PY
    else
      echo "$name seed=$seed failed: see $run.log"
    fi
  done
done

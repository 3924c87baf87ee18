#!/bin/bash
# On the lent H200, from a folder made by `benchmarks/nm/op_model_carry.sh DEST`: build the runtime_ops CUDA
# library (cuSPARSELt from the image's nvidia-cusparselt package), then op_model.py (ARGS) -> $OUT.
set -u
OUT=${OUT:-/tmp/nm-op-out}; mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/../.." && pwd); cd "$here"; export PYTHONPATH=$here:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cslt=$(python3 - <<'PY'
import glob, os, nvidia
for base in nvidia.__path__:
    for h in glob.glob(os.path.join(base, "*", "include", "cusparseLt.h")):
        print(os.path.dirname(os.path.dirname(h))); raise SystemExit
PY
)
echo "cuSPARSELt: $cslt" >> "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S spa_compiler/runtime_ops -B /tmp/rtb -G Ninja -DSPA_ORT_INCLUDE="$here/ort_include" -DSPA_WITH_CUDA=ON \
  -DSPA_CUSPARSELT_ROOT="$cslt" -DSPA_WITH_TRT=OFF -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
  > "$OUT/build.log" 2>&1 && ninja -C /tmp/rtb >> "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 ))s"; [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
PYTHONUNBUFFERED=1 timeout "${OP_TIMEOUT:-240}" python3 benchmarks/nm/op_model.py --lib /tmp/rtb/libspa_ort_ops_cuda.so \
  --out "$OUT/op_model.json" "$@" 2>&1 | grep -v -i "warn\|^  " | tee "$OUT/log.txt" | tail -40

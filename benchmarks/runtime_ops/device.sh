#!/bin/bash
# Run on the lent H200 from a folder laid out as make_carry.sh makes it (py/runtime_ops sources,
# ort_include/, trt_include/, gpu_run.py): build the CUDA libraries there, run the TensorRT
# plugins' enqueue on the GPU, then gpu_run.py. Everything lands in $OUT.
set -u
OUT=${OUT:-/tmp/rtops-out}; mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cslt=$(python3 - <<'PY'
import glob, os, nvidia
for base in nvidia.__path__:
    for h in glob.glob(os.path.join(base, "*", "include", "cusparseLt.h")):
        print(os.path.dirname(os.path.dirname(h))); raise SystemExit
PY
)
echo "cuSPARSELt: $cslt" | tee -a "$OUT/gpu.txt"; grep -h "define CUSPARSELT_VER_M" "$cslt/include/cusparseLt.h" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S "$here/py/runtime_ops" -B /tmp/rtb -G Ninja -DSPA_ORT_INCLUDE="$here/ort_include" -DSPA_WITH_CUDA=ON \
  -DSPA_CUSPARSELT_ROOT="$cslt" -DSPA_WITH_TRT=ON -DSPA_TRT_INCLUDE="$here/trt_include" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" > "$OUT/build.log" 2>&1 &&
  ninja -C /tmp/rtb >> "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 ))s"; tail -5 "$OUT/build.log"
[ $rc -eq 0 ] || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
grep -E "registers|spill" "$OUT/build.log" | head -12
timeout 120 /tmp/rtb/spa_trt_selftest /tmp/rtb/libspa_trt_plugins.so --enqueue > "$OUT/trt_selftest.jsonl" 2> "$OUT/trt_selftest.err"
echo "trt selftest rc=$?"; grep -E '"ok": false|enqueue' "$OUT/trt_selftest.jsonl" | head -20; tail -1 "$OUT/trt_selftest.jsonl"
# one process per op: a CUDA fault in one (sticky for the process) cannot lose the other's results
timeout ${GPU_RUN_TIMEOUT:-200} python3 "$here/gpu_run.py" --lib /tmp/rtb/libspa_ort_ops_cuda.so --out "$OUT" \
  --only monarch_small,kernels_monarch,ort --ops MonarchMatMul --tag _monarch ${GPU_RUN_ARGS:-} 2>&1 | tee "$OUT/gpu_run_monarch.log" | grep -v '^{'
echo "gpu_run monarch rc=${PIPESTATUS[0]}"
timeout ${GPU_RUN_TIMEOUT:-200} python3 "$here/gpu_run.py" --lib /tmp/rtb/libspa_ort_ops_cuda.so --out "$OUT" \
  --only nm_small,kernels_nm,ort --ops NMSparseMatMul --tag _nm ${GPU_RUN_ARGS:-} 2>&1 | tee "$OUT/gpu_run_nm.log" | grep -v '^{'
echo "gpu_run nm rc=${PIPESTATUS[0]}"

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
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" > /tmp/build.log 2>&1 &&
  ninja -C /tmp/rtb >> /tmp/build.log 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 ))s"; tail -5 /tmp/build.log
[ $rc -eq 0 ] || { grep -E "error" -A3 /tmp/build.log | head -40; exit 1; }
grep -E "registers|spill" /tmp/build.log | head -12
timeout 120 /tmp/rtb/spa_trt_selftest /tmp/rtb/libspa_trt_plugins.so --enqueue > "$OUT/trt_selftest.jsonl" 2> /tmp/trt_selftest.err
echo "trt selftest rc=$?"; grep -i "cusparselt\|illegal" /tmp/trt_selftest.err | head -5; grep -E '"ok": false|enqueue' "$OUT/trt_selftest.jsonl" | head -20; tail -1 "$OUT/trt_selftest.jsonl"
# one process per op: a CUDA fault in one (sticky for the process) cannot lose the other's results
timeout ${GPU_RUN_TIMEOUT:-200} python3 "$here/gpu_run.py" --lib /tmp/rtb/libspa_ort_ops_cuda.so --out "$OUT" \
  --only monarch_small,kernels_monarch,ort --ops MonarchMatMul --tag _monarch ${GPU_RUN_ARGS:-} 2>&1 | tee /tmp/gpu_run_monarch.log | grep -v '^{'
echo "gpu_run monarch rc=${PIPESTATUS[0]}"
# PyTorch's own cuSPARSELt binding on one shape, in its own process: does the library run here?
timeout 60 python3 - > /tmp/torch_cslt.txt 2>&1 <<'PY'
import torch
w = torch.randn(3072, 768, device="cuda", dtype=torch.float16)
mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(3072, 192)
w = w * mask
x = torch.randn(8192, 768, device="cuda", dtype=torch.float16)
c = torch._cslt_compress(w)
y = torch._cslt_sparse_mm(c, x.t()).t()
torch.cuda.synchronize()
print("torch _cslt_sparse_mm ok, rel err", float((y.float() - x.float() @ w.float().t()).norm() / (x.float() @ w.float().t()).norm()))
PY
echo "torch cslt rc=$?"; cat /tmp/torch_cslt.txt | tail -2
timeout ${GPU_RUN_TIMEOUT:-200} python3 "$here/gpu_run.py" --lib /tmp/rtb/libspa_ort_ops_cuda.so --out "$OUT" \
  --only nm_small,kernels_nm,ort --ops NMSparseMatMul --tag _nm ${GPU_RUN_ARGS:-} 2>&1 | tee /tmp/gpu_run_nm.log | grep -v '^{'
echo "gpu_run nm rc=${PIPESTATUS[0]}"
if grep -q "illegal\|cuSPARSELt status" /tmp/gpu_run_nm.log; then  # retry without the algorithm search
  SPA_NM_SEARCH=0 timeout 150 python3 "$here/gpu_run.py" --lib /tmp/rtb/libspa_ort_ops_cuda.so --out "$OUT" \
    --only nm_small,kernels_nm,ort --ops NMSparseMatMul --tag _nm_nosearch --quick 2>&1 | tee /tmp/gpu_run_nm_nosearch.log | grep -v '^{'
fi

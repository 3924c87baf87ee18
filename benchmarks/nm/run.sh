#!/usr/bin/env bash
# N:M (2:4) quality on the real models, per criterion, and the per-layer error cross-check.
# Needs scripts/install_real.sh in the active environment (python / spa-compile on PATH).
#
#   benchmarks/nm/run.sh smollm2 [CRITERIA="magnitude wanda sparsegpt sparsegpt-seq"] [CALIB_N=32] [WINDOWS=32]
#     (wanda, sparsegpt: one-shot; X-seq: sequential calibration in STAGES=8 stages)
#   benchmarks/nm/run.sh minilm | efficientnet            (--quick sizes unless FULL=1)
#   benchmarks/nm/run.sh crosscheck-smollm2 | crosscheck-minilm
#   benchmarks/nm/run.sh latency-minilm                   (sparsify-nm{keep=measured} on ORT CPU)
#   benchmarks/nm/run.sh tensorrt-minilm                  (--preset nm --target tensorrt: prior + TRT-RTX builds)
# Results: benchmarks/nm/results/<what>.json (each with its commands).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=benchmarks/nm/results; mkdir -p "$R"
W=${WORK:-$(mktemp -d)}; export WORK=$W   # reports and calibration stay here for the cross-checks
CAL=benchmarks/quality/evaluate.py
export_dense() {  # model exporter -> path
  python -c "from spa_compiler.models_zoo.real import export_real; print(export_real('$1', '$2'))" | tail -1
}
quick() { [ "${FULL:-0}" = 1 ] || echo --quick; }

compile_eval() {  # model-key dense criterion[-seq] calib-spec shape-args... ; writes $R/<key>-<crit>.json
  # crit "wanda" / "sparsegpt": one-shot (sequential=0); "wanda-seq" / "sparsegpt-seq": sequential
  # calibration in STAGES stages (default 8, the pass's default)
  local key=$1 dense=$2 crit=$3 calib=$4; shift 4
  local out=$W/$key-$crit.onnx rep=$W/$key-$crit.report.json calibargs=() opts
  [ "$crit" != magnitude ] && calibargs=(--calib "$calib")
  case $crit in
    *-seq) opts="criterion=${crit%-seq},sequential=${STAGES:-8}" ;;
    magnitude) opts="criterion=magnitude" ;;
    *) opts="criterion=$crit,sequential=0" ;;
  esac
  local cmd=(spa-compile "$dense" -o "$out" --no-measure --report "$rep"
             -p "cleanup,sparsify-nm{keep=all,$opts},cleanup" "$@" "${calibargs[@]}")
  echo "+ ${cmd[*]}" >&2
  /usr/bin/time -f "%e %M" -o "$W/time-$key-$crit" "${cmd[@]}" | tail -2 >&2
  local qcmd=(python -m benchmarks.quality.run --model "$key" --onnx "$out" --dense "$dense" --out "$W/$key-$crit.q.json")
  case $key in smollm2) qcmd+=(--windows "${WINDOWS:-32}");; *) qcmd+=($(quick));; esac
  echo "+ ${qcmd[*]}" >&2
  "${qcmd[@]}" | tail -4 >&2
  python - "$rep" "$W/$key-$crit.q.json" "$W/time-$key-$crit" "$R/$key-$crit.json" "${cmd[*]}" "${qcmd[*]}" <<'PY'
import json, sys, pathlib
rep, q, t, out, c1, c2 = sys.argv[1:]
r = json.loads(pathlib.Path(rep).read_text())
nm = next(p for p in r["passes"] if p["name"] == "sparsify-nm")
wall, kb = pathlib.Path(t).read_text().split()[-2:]
layers = [d for d in nm["details"] if "site" in d]
pathlib.Path(out).write_text(json.dumps({
  "compile_command": c1, "quality_command": c2, "compile_seconds": float(wall), "compile_peak_kb": int(kb),
  "stats": nm["stats"], "skipped": nm["skipped"], "layers": layers,
  "quality": json.loads(pathlib.Path(q).read_text())}, indent=1, default=str) + "\n")
print(out)
PY
}

for what in "$@"; do
  case $what in
    smollm2)
      M=$(export_dense smollm2-135m dynamo)
      [ -d "$W/calib-smollm2" ] || python -m benchmarks.quality.run --model smollm2 --write-calib "$W/calib-smollm2" --calib-n "${CALIB_N:-32}" >&2
      for crit in ${CRITERIA:-magnitude wanda sparsegpt sparsegpt-seq}; do
        compile_eval smollm2 "$M" "$crit" "$W/calib-smollm2" --input-shape input_ids:1x512
      done ;;
    minilm)
      M=$(export_dense minilm-l6 torchscript)
      # the hints size the compile's own checks; calibration feeds are single sentences of their
      # own lengths (checked against the model's declared shapes, not against the hints)
      for crit in ${CRITERIA:-magnitude wanda sparsegpt sparsegpt-seq}; do
        compile_eval minilm "$M" "$crit" "$CAL:minilm_calibration" --input-shape input_ids:1x128 \
          --input-shape attention_mask:1x128 --input-shape token_type_ids:1x128
      done ;;
    efficientnet)
      M=$(export_dense efficientnet-lite0 torchscript)
      for crit in ${CRITERIA:-magnitude wanda sparsegpt sparsegpt-seq}; do
        compile_eval efficientnet "$M" "$crit" "$CAL:efficientnet_calibration" --input-shape input:1x3x224x224
      done ;;
    crosscheck-smollm2)
      M=$(export_dense smollm2-135m dynamo)
      [ -d "$W/calib-smollm2" ] || python -m benchmarks.quality.run --model smollm2 --write-calib "$W/calib-smollm2" --calib-n "${CALIB_N:-32}" >&2
      [ -f "$W/smollm2-sparsegpt.report.json" ] || { echo "run smollm2 first with the same WORK=$W" >&2; exit 2; }
      python -m benchmarks.nm.crosscheck --model "$M" --report "$W/smollm2-sparsegpt.report.json" \
        --calib "$W/calib-smollm2" --sites "${SITES:-^node_linear(_([1-6]|10[5-9]|11[01]|20[3-9]))?$}" --out "$R/crosscheck-smollm2.json" ;;
    crosscheck-minilm)
      M=$(export_dense minilm-l6 torchscript)
      [ -f "$W/minilm-sparsegpt.report.json" ] || { echo "run minilm first with the same WORK=$W" >&2; exit 2; }
      python -m benchmarks.nm.crosscheck --model "$M" --report "$W/minilm-sparsegpt.report.json" \
        --calib "$CAL:minilm_calibration" --out "$R/crosscheck-minilm.json" ;;
    latency-minilm)
      M=$(export_dense minilm-l6 torchscript)
      cmd=(spa-compile "$M" -o "$W/minilm-measured.onnx" --report "$R/latency-minilm-ort-cpu.report.json"
           -p "cleanup,sparsify-nm{criterion=magnitude},cleanup" --input-shape input_ids:1x128
           --input-shape attention_mask:1x128 --input-shape token_type_ids:1x128)
      echo "+ ${cmd[*]}" >&2; "${cmd[@]}" | tail -3 ;;
    tensorrt-minilm)  # the preset on target tensorrt: the prior decides; deploy check = TensorRT-RTX builds
      M=$(export_dense minilm-l6 torchscript)
      cmd=(spa-compile "$M" -o "$W/minilm-trt.onnx" --report "$R/tensorrt-minilm.report.json" --preset nm
           --target tensorrt --no-measure --input-shape input_ids:1x128 --input-shape attention_mask:1x128
           --input-shape token_type_ids:1x128)
      echo "+ ${cmd[*]}" >&2; "${cmd[@]}" | tail -3 ;;
    *) echo "run.sh: unknown $what" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# SmolLM2-135M, the same share of FFN neurons removed in every layer (the issue's prototype setting),
# by criterion: magnitude (no data), OBSPA (no data: the model's response to random tokens), OBS
# (64 windows of 512 tokens from the five other novels, with the least-squares re-fit), then perplexity
# on Pride and Prejudice (16 x 512-token windows). Needs scripts/install_real.sh and the dynamo export.
# Usage: RATIO=0.25 benchmarks/quality/smollm2_ffn.sh   -> benchmarks/quality/results/smollm2-ffn-<ratio>.json
set -euo pipefail
cd "$(dirname "$0")/../.."
ratio=${RATIO:-0.25}
M=${SPA_COMPILER_CACHE:-$HOME/.cache/spa-compiler}/real/smollm2-135m-dynamo/model.onnx
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
OUT=${OUT:-benchmarks/quality/results/smollm2-ffn-$ratio.json}
mkdir -p "$(dirname "$OUT")"
for crit in ${CRITERIA:-magnitude obspa obs}; do
  calib=()
  [ "$crit" = obs ] && calib=(--calib benchmarks/quality/evaluate.py:smollm2_calibration)
  /usr/bin/time -f "$crit: %e s, %M kB peak" spa-compile "$M" -o "$W/$crit.onnx" --no-measure \
    -p "cleanup,prune-ziplm{criterion=$crit,units=neuron,ratio=$ratio},cleanup" \
    --input-shape input_ids:1x512 --report "$W/$crit.report.json" "${calib[@]}" | tail -2
  python -m benchmarks.quality.run --model smollm2 --onnx "$W/$crit.onnx" --dense "$M" \
    --out "$W/$crit.quality.json" | tail -3
done
python - "$W" "$OUT" "$ratio" <<'PY'
import json, sys, pathlib
w, out, ratio = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rows = {}
for q in sorted(w.glob("*.quality.json")):
    crit = q.name.split(".")[0]
    rep = json.loads((w / f"{crit}.report.json").read_text())
    stats = next(p for p in rep["passes"] if p["name"] == "prune-ziplm")
    rows[crit] = {"quality": json.loads(q.read_text()), "pass_seconds": stats["seconds"],
                  "params_after": rep["after"]["params"], "params_before": rep["before"]["params"]}
pathlib.Path(out).write_text(json.dumps({"ffn_ratio": ratio, "rows": rows}, indent=1, default=str) + "\n")
print(out)
PY

#!/bin/bash
# Lay out what device.sh needs in DEST (sources only, ~1.5 MB): the runtime_ops package, the ORT and
# TensorRT headers (from the build's header cache, fetched if absent), the two scripts.
# usage: make_carry.sh DEST   (from the repository root)
set -euo pipefail
dest=$1
root=$(git rev-parse --show-toplevel)
py=${PYTHON:-$root/.venv/bin/python}
rm -rf "$dest"; mkdir -p "$dest/py"
cp -r "$root/runtime_ops" "$dest/py/runtime_ops"; find "$dest/py" -name __pycache__ -prune -exec rm -rf {} +
ort=$("$py" -c "from spa_compiler.runtime_ops.common import headers; print(headers.ort_include())")
trt=$("$py" -c "from spa_compiler.runtime_ops.common import headers; print(headers.trt_include())")
cp -r "$ort" "$dest/ort_include"; cp -r "$trt" "$dest/trt_include"
cp "$root/benchmarks/runtime_ops/gpu_run.py" "$root/benchmarks/runtime_ops/device.sh" "$dest/"
du -sh "$dest"

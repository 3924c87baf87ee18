#!/bin/bash
# Lay out what op_model_device.sh needs in DEST (sources only, ~2 MB): the compiler in its installed
# package layout (passes, models_zoo, runtime_ops inside spa_compiler/), the ORT headers, the scripts.
# usage: benchmarks/nm/op_model_carry.sh DEST   (from the repository root)
set -euo pipefail
dest=$1; root=$(git rev-parse --show-toplevel); py=${PYTHON:-$root/.venv/bin/python}
rm -rf "$dest"; mkdir -p "$dest/benchmarks/nm"
cp -r "$root/spa_compiler" "$dest/spa_compiler"
for d in passes models_zoo runtime_ops; do cp -r "$root/$d" "$dest/spa_compiler/$d"; done
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$("$py" -c "from spa_compiler.runtime_ops.common import headers; print(headers.ort_include())")" "$dest/ort_include"
cp "$root/benchmarks/nm/op_model.py" "$root/benchmarks/nm/op_model_device.sh" "$dest/benchmarks/nm/"
du -sh "$dest"

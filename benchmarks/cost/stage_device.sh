#!/usr/bin/env bash
# Copy this tree, laid out as installed, into DEST (default /work/main/.dev-carry/cost) for the device tool:
# spa_compiler/ with passes/, models_zoo/ and runtime_ops/ inside it (what the editable install maps), and
# benchmarks/cost. Sources only (no models, caches or builds).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-/work/main/.dev-carry/cost}
rm -rf "$dest"; mkdir -p "$dest/benchmarks"
git -C "$root" archive --format=tar HEAD spa_compiler passes models_zoo runtime_ops benchmarks/__init__.py benchmarks/cost \
  | tar -x -C "$dest"
mv "$dest/passes" "$dest/spa_compiler/passes"; mv "$dest/models_zoo" "$dest/spa_compiler/models_zoo"
mv "$dest/runtime_ops" "$dest/spa_compiler/runtime_ops"
rm -rf "$dest/benchmarks/cost/results"
git -C "$root" rev-parse --short HEAD > "$dest/COMMIT"
du -sh "$dest"

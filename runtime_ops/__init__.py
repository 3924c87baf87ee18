"""Structured ops with their own kernels: MonarchMatMul and NMSparseMatMul (domain `spa.ops`).

Each op lives in one folder (`monarch_matmul/`, `nm_sparse_matmul/`) with its README, schema and
cost model (`op.py`), NumPy oracle (`reference.py`), standard-ONNX fallback (`decompose.py`), C++
CPU kernel, CUDA kernel, ONNX Runtime registration and TensorRT plugin. This module is the Python
entry point:

* `register_schemas()`: register the ops with `onnx` (checker, shape inference);
* `decompose(model)`: replace every spa.ops node by standard ONNX ops (any runtime runs that);
* `ort_library_path()` / `trt_plugin_path()`: the built libraries (`build()` makes them; see
  `python -m spa_compiler.runtime_ops.build --help`);
* `channel_rules()` / `cost_models()`: per-op functions for the group analysis and the analytic
  latency provider, keyed like `spa_compiler.channel_rules.RULES` ("spa.ops:<op>");
* `documentation()`: the README sections of every op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from .common.schema import DOMAIN, register
from .monarch_matmul import op as _monarch
from .nm_sparse_matmul import op as _nm

__all__ = [
    "DOMAIN",
    "OPS",
    "channel_rules",
    "cost_models",
    "decompose",
    "documentation",
    "library_dir",
    "ort_library_path",
    "register_schemas",
    "trt_plugin_path",
]

#: op_type -> the op's `op` module.
OPS: dict[str, ModuleType] = {_monarch.OP_TYPE: _monarch, _nm.OP_TYPE: _nm}
_HERE = Path(__file__).resolve().parent
_FOLDERS = {_monarch.OP_TYPE: "monarch_matmul", _nm.OP_TYPE: "nm_sparse_matmul"}

ORT_LIBRARY = "libspa_ort_ops.so"
ORT_CUDA_LIBRARY = "libspa_ort_ops_cuda.so"
TRT_LIBRARY = "libspa_trt_plugins.so"


def register_schemas() -> None:
    """Register both ops' schemas with onnx (idempotent).

    After this, `onnx.checker.check_model(model, full_check=True)` and
    `onnx.shape_inference.infer_shapes(model, strict_mode=True)` check and infer spa.ops nodes.
    """
    for mod in OPS.values():
        register(mod.schema())


def channel_rules() -> dict[str, Callable[[Any, Any], None]]:
    """{"spa.ops:<op>": rule} in the `spa_compiler.channel_rules.RULES` format."""
    return {f"{DOMAIN}:{name}": mod.channel_rule for name, mod in OPS.items()}


def cost_models() -> dict[str, tuple[Callable[..., int | None], Callable[..., int | None]]]:
    """{"spa.ops:<op>": (node_macs(node, shapes), node_bytes(node, shapes, elem_bytes))}."""
    return {f"{DOMAIN}:{name}": (mod.node_macs, mod.node_bytes) for name, mod in OPS.items()}


def documentation() -> dict[str, dict[str, str]]:
    """{op_type: {section title: text}} from each op's README.md ('## Title' sections)."""
    out: dict[str, dict[str, str]] = {}
    for name, folder in _FOLDERS.items():
        text = (_HERE / folder / "README.md").read_text(encoding="utf-8")
        parts = re.split(r"^## +(.+)$", text, flags=re.M)
        out[name] = {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return out


def decompose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every spa.ops node replaced by standard ONNX ops (see the ops'
    decompose.py). Needs static shapes for the weights (initializers or inferred value_info)."""
    from .common.lower import decompose_model

    return decompose_model(model)


def library_dir() -> Path:
    """Where `build()` puts the libraries: $SPA_RUNTIME_OPS_LIB_DIR, else
    ~/.cache/spa-compiler/runtime_ops/<version> (XDG_CACHE_HOME respected)."""
    env = os.environ.get("SPA_RUNTIME_OPS_LIB_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "spa-compiler" / "runtime_ops" / _build_tag()


def _build_tag() -> str:
    """A hash of the C++/CUDA sources, so an edit to them means a new build folder."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(_HERE.rglob("*")):
        if p.suffix in (".cc", ".cu", ".cpp", ".h", ".cuh", ".txt") and p.is_file():
            h.update(p.relative_to(_HERE).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _find(name: str) -> Path:
    from spa_compiler.errors import MissingRequirementError

    path = library_dir() / name
    if not path.is_file():
        raise MissingRequirementError(
            f"{name} is not built (looked in {library_dir()})",
            hint="python -m spa_compiler.runtime_ops.build (needs cmake and a C++ compiler); "
            "without it, runtime_ops.decompose(model) gives the standard-ONNX form",
        )
    return path


def ort_library_path(cuda: bool = False) -> Path:
    """The ONNX Runtime custom-op library: `SessionOptions.register_custom_ops_library(str(path))`.

    Args:
        cuda: The library with CUDA kernels too (CPU and CUDAExecutionProvider); it needs the CUDA
            runtime and cuSPARSELt at load time. The default one is CPU only.

    Raises:
        MissingRequirementError: not built yet (the message says how).
    """
    return _find(ORT_CUDA_LIBRARY if cuda else ORT_LIBRARY)


def trt_plugin_path() -> Path:
    """The TensorRT plugin library (IPluginV3 creators for both ops): load it with
    `trt.get_plugin_registry().load_library(str(path))` before parsing a model that uses them."""
    return _find(TRT_LIBRARY)


def build(**kwargs: Any) -> dict[str, Path]:
    """Build the libraries (see `runtime_ops.build.build`); returns {name: path}."""
    from .build import build as _build

    return _build(**kwargs)

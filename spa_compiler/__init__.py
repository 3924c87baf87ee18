"""spa-compiler: structured compression of ONNX models to a measured latency budget."""

from __future__ import annotations

# Installed, `spa_compiler.passes` / `.runtime_ops` / `.models_zoo` are the top-level folders
# passes/, runtime_ops/ and models_zoo/ (setuptools package-dir mapping). Run from a source
# checkout without installing (e.g. PYTHONPATH=.), they are found through the checkout's root.
import os as _os

from spa_compiler._version import __version__

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "passes")) and _os.path.isfile(
    _os.path.join(_root, "passes", "registry.py")
):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

from spa_compiler.compile import Budget, compile_model, parse_budget  # noqa: E402
from spa_compiler.context import CompileContext  # noqa: E402
from spa_compiler.errors import SpaError  # noqa: E402
from spa_compiler.ir import ModelIR  # noqa: E402
from spa_compiler.pass_base import Pass, PassResult  # noqa: E402
from spa_compiler.pass_manager import PassManager  # noqa: E402

__all__ = [
    "Budget",
    "CompileContext",
    "ModelIR",
    "Pass",
    "PassManager",
    "PassResult",
    "SpaError",
    "__version__",
    "compile_model",
    "parse_budget",
]

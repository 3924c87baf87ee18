"""spa-compiler: structured compression of ONNX models to a measured latency budget."""

from __future__ import annotations

__version__ = "0.1.0"

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

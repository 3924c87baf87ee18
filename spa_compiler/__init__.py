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

# The public names are imported on first use (PEP 562): `import spa_compiler.cli` stays fast, so
# the CLI installs its signal handlers before numpy, onnx and graphsurgeon load.
_LAZY = {
    "Budget": "spa_compiler.compile",
    "compile_model": "spa_compiler.compile",
    "parse_budget": "spa_compiler.compile",
    "CompileContext": "spa_compiler.context",
    "SpaError": "spa_compiler.errors",
    "ModelIR": "spa_compiler.ir",
    "Pass": "spa_compiler.pass_base",
    "PassResult": "spa_compiler.pass_base",
    "PassManager": "spa_compiler.pass_manager",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spa_compiler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The API's verbs (api.py) take the names of two modules, compile.py and inspect.py: both modules
# are loaded first, so `from spa_compiler.compile import ...` still finds them (sys.modules) while
# `spa_compiler.compile` / `spa_compiler.inspect` are the functions. (Write `from spa_compiler.compile
# import X`, never `import spa_compiler.compile as m`, which would get the function.)
import spa_compiler.inspect as _inspect_module  # noqa: E402,F401
from spa_compiler.api import Inspection, Result, Run, compile, inspect, profile  # noqa: E402

__all__ = [
    "Budget",
    "CompileContext",
    "Inspection",
    "ModelIR",
    "Pass",
    "PassManager",
    "PassResult",
    "Result",
    "Run",
    "SpaError",
    "__version__",
    "compile",
    "compile_model",
    "inspect",
    "parse_budget",
    "profile",
]

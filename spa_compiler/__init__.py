"""spa-compiler: structured compression of ONNX models to a measured latency budget."""

from __future__ import annotations

# Installed, `spa_compiler.passes` / `.runtime_ops` / `.models_zoo` are the top-level folders
# passes/, runtime_ops/ and models_zoo/ (setuptools package-dir mapping). Run from a source
# checkout without installing (e.g. PYTHONPATH=.), they are found through the checkout's root.
import os as _os

from spa_compiler._version import __version__

# When this process is the command (the `spa-compile` script or `python -m spa_compiler`), SIGINT
# and SIGTERM are taken over before the imports below (numpy, onnx, graphsurgeon: slow), so an early
# Ctrl-C gives one line, not a traceback. The handler only records the signal until `cli.main` runs
# (an exception raised inside an import would surface as a traceback). Library users are untouched.
import sys as _sys

if _sys.argv and (
    _sys.argv[0].replace("\\", "/").endswith(("/spa-compile", "spa_compiler/__main__.py"))
    or _sys.argv[0] in ("spa-compile", "-m")
):
    from spa_compiler import signals as _signals

    _signals.install(arm=False)

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "passes")) and _os.path.isfile(
    _os.path.join(_root, "passes", "registry.py")
):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

# the project's own ops (runtime_ops, domain spa.ops) are known to onnx's checker and shape
# inference wherever the compiler runs
from spa_compiler.runtime_ops import register_schemas as _register_schemas  # noqa: E402

_register_schemas()

from spa_compiler.compile import Budget, compile_model, parse_budget  # noqa: E402
from spa_compiler.context import CompileContext  # noqa: E402
from spa_compiler.errors import SpaError  # noqa: E402
from spa_compiler.ir import ModelIR  # noqa: E402
from spa_compiler.pass_base import Pass, PassResult  # noqa: E402
from spa_compiler.pass_manager import PassManager  # noqa: E402

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

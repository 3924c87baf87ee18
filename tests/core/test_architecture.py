"""The direction of the code, checked on the import graph (every import, module level or local).

- no import cycles between the project's modules;
- the core never imports a pass (the registry, a table of names, is the one seam; passes are
  loaded by name);
- no module imports another module's private (underscore) name;
- passes never write the report (they hand notes and stats back in their PassResult).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: source folder -> installed package (pyproject's package-dir mapping)
PACKAGES = {
    "spa_compiler": "spa_compiler",
    "passes": "spa_compiler.passes",
    "runtime_ops": "spa_compiler.runtime_ops",
    "models_zoo": "spa_compiler.models_zoo",
}
SEAMS = {"spa_compiler.passes.registry"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import outside `if TYPE_CHECKING:` blocks."""
    out: list[tuple[str, str | None]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for name, path in mods.items():
        for module, imported in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not module.startswith("spa_compiler"):
                continue
            full = f"{module}.{imported}" if imported else module
            if full in mods:
                graph[name].add(full)
                continue
            graph[name].add(module)
            if imported and imported.startswith("_") and not imported.startswith("__") and module != name:
                private.append(f"{name} imports {module}.{imported}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_core_never_imports_a_pass() -> None:
    graph, _ = _graph()
    bad = sorted(f"{a} -> {b}" for a, bs in graph.items() if not a.startswith("spa_compiler.passes")
                 for b in bs if b.startswith("spa_compiler.passes") and b not in SEAMS)
    assert bad == []


def test_no_private_names_across_modules() -> None:
    _, private = _graph()
    assert private == []


def test_passes_never_write_the_report() -> None:
    offenders = []
    for f in (ROOT / "passes").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "report":
                offenders.append(f"{f.name}:{node.lineno}")
    assert offenders == []


def test_the_checks_can_fail() -> None:
    """The cycle finder and the private-name scan see what they should (guards the guards)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("from spa_compiler.ir import _x\nif TYPE_CHECKING:\n    import spa_compiler.y\n")
    assert _imports(tree) == [("spa_compiler.ir", "_x")]

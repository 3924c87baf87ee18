"""Every package of the source tree is listed in pyproject.toml (a wheel carries only those)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"spa_compiler": "spa_compiler", "passes": "spa_compiler.passes",
           "runtime_ops": "spa_compiler.runtime_ops", "models_zoo": "spa_compiler.models_zoo"}


def test_every_package_is_listed() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, pkg in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([pkg, *rel]))
    assert sorted(found - listed) == []


def test_every_folder_of_modules_is_a_package() -> None:
    missing = []
    for folder in FOLDERS:
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            if not (py.parent / "__init__.py").exists():
                missing.append(str(py.parent.relative_to(ROOT)))
    assert sorted(set(missing)) == []

"""Reports a person reads: the HTML page (`html`), drawn with small inline-SVG charts (`svg`).

`write_html(path, data)` renders a compile report (`Report.to_dict()`, or a report.json loaded) or
a multi-budget comparison (`html.comparison(...)`) into one self-contained file, atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spa_compiler.errors import UsageError
from spa_compiler.reporting.html import (
    COMPARE_SCHEMA,
    comparison,
    render,
    render_comparison,
    render_report,
)

__all__ = [
    "COMPARE_SCHEMA",
    "comparison",
    "load_report",
    "render",
    "render_comparison",
    "render_report",
    "write_html",
]


def write_html(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Render `data` (a report or comparison dict) to `path`, written atomically; returns the path."""
    from spa_compiler.report import write_text_atomic

    out = Path(path)
    write_text_atomic(out, render(data))
    return out


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved report.json (single or comparison); UsageError with a one-line reason otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UsageError(
            f"the report {p} does not exist", hint="give the JSON written by --report"
        ) from e
    except IsADirectoryError as e:
        raise UsageError(
            f"the report {p} is a directory", hint="give the JSON written by --report"
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(
            f"cannot read the report {p}: {e}", hint="give the JSON written by --report"
        ) from e
    if not isinstance(data, dict) or not (
        data.get("schema") == COMPARE_SCHEMA or "passes" in data or "status" in data
    ):
        raise UsageError(
            f"{p} is not a spa-compiler report", hint="give the JSON written by --report"
        )
    return data

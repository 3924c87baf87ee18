"""The README's promises: CI runs its test command, and every usage line is a valid command line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from spa_compiler.cli import VERBS, build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    first, second = _code_blocks()[:2]
    assert "spa-compile demo" in first
    install, _, test = second.strip().partition(" && .venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.split("&& ", 1)[1] in ci  # the same pip install line
    assert ".venv/bin/python -m pytest -q" in ci


USAGE = [line.split("#")[0].strip() for block in _code_blocks()[2:] for line in block.splitlines()
         if line.strip().startswith("spa-compile")]


@pytest.mark.parametrize("line", USAGE)
def test_usage_lines_parse(line: str) -> None:
    argv = shlex.split(line)[1:]
    if argv and argv[0] not in VERBS:
        argv.insert(0, "compile")
    args = build_parser().parse_args(argv)
    assert args.verb in VERBS


def test_usage_has_examples() -> None:
    assert len(USAGE) >= 8

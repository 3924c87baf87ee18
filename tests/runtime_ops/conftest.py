"""Fixtures for the runtime_ops tests: model builders and the built libraries (built once per
session; skipped only where no cmake / C++ compiler exists, so CI, which has both, runs them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spa_compiler import runtime_ops
from spa_compiler.runtime_ops.build import build, have_toolchain


@pytest.fixture(scope="session", autouse=True)
def _schemas() -> None:
    runtime_ops.register_schemas()


@pytest.fixture(scope="session")
def libs() -> dict[str, Path]:
    """{library name: path} of the CPU ORT library and the TensorRT plugins (and self-test)."""
    missing = have_toolchain()
    if missing:
        if (
            os.environ.get("CI") == "true"
        ):  # CI has the toolchain (.ci/run installs it): never skip there
            pytest.fail(f"building runtime_ops needs {missing}")
        pytest.skip(f"building runtime_ops needs {missing}")
    return build(cuda=False, trt=True)


@pytest.fixture(scope="session")
def ort_lib(libs: dict[str, Path]) -> Path:
    return libs[runtime_ops.ORT_LIBRARY]


@pytest.fixture(scope="session")
def trt_lib(libs: dict[str, Path]) -> Path:
    return libs[runtime_ops.TRT_LIBRARY]

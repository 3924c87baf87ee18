"""Shared fixtures and markers.

Markers: `slow` (run with --run-slow or SPA_RUN_SLOW=1), `gpu` (needs onnxruntime's CUDA provider),
`tensorrt` (needs the tensorrt or tensorrt_rtx Python module), `real` (real pretrained models).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def _has_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def _has_tensorrt() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx_bindings"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow") or os.environ.get("SPA_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow or SPA_RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="needs onnxruntime's CUDAExecutionProvider")
    skip_trt = pytest.mark.skip(reason="needs the tensorrt or tensorrt_rtx module")
    cuda, trt = _has_cuda(), _has_tensorrt()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator; every test draws its randomness from it."""
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _no_timing_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's timing cache (tests/core/test_latency_cache.py turns
    it on in a temporary folder)."""
    monkeypatch.setenv("SPA_COMPILER_NO_CACHE", "1")

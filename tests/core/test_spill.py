"""Bounded memory for the re-fit (criteria.spill): Hessians beyond the limit wait on disk, and the
compiled model is the same as with every Hessian in memory."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from spa_compiler.criteria import spill
from tests.passes.test_sequential_and_output_error import _calib, _prune, deep_mlp


def test_keep_holds_up_to_the_limit_then_spills(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SPA_COMPILER_HESSIAN_MB", str(3 * 8 * 64 * 64 / 2**20))  # three 64x64 float64
    monkeypatch.setenv("SPA_COMPILER_SPILL_DIR", str(tmp_path))
    base = spill.stats()["resident_bytes"]
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((64, 64)) for _ in range(5)]
    kept = [spill.keep(m) for m in mats]
    on_disk = [k for k in kept if isinstance(k, spill.Spilled)]
    assert len(on_disk) >= 2 and len(os.listdir(tmp_path)) == len(on_disk)
    assert spill.stats()["resident_bytes"] - base <= 3 * 8 * 64 * 64
    for m, k in zip(mats, kept):
        np.testing.assert_array_equal(spill.as_array(k), m)
    del kept, on_disk, k
    gc.collect()
    assert os.listdir(tmp_path) == []  # files go with their handles
    del mats, m
    gc.collect()
    assert spill.stats()["resident_bytes"] == base  # the held ones are released when freed


def test_refit_with_hessians_on_disk_equals_in_memory(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator,
                                                      tmp_path) -> None:
    """obs with calibration and sequential stages: every Hessian spilled (limit 0) gives the same
    weights as every Hessian in memory; nothing is left on disk."""
    dense = deep_mlp(rng)
    calib = _calib(rng)
    monkeypatch.setenv("SPA_COMPILER_SPILL_DIR", str(tmp_path))
    monkeypatch.setenv("SPA_COMPILER_HESSIAN_MB", "4096")
    before = spill.stats()["spilled"]
    ram, _ = _prune(dense, calib, sequential=4)
    assert spill.stats()["spilled"] == before
    monkeypatch.setenv("SPA_COMPILER_HESSIAN_MB", "0")
    gc.collect()
    spill.reset_peak()
    resident = spill.stats()["resident_bytes"]
    disk, _ = _prune(dense, calib, sequential=4)
    assert spill.stats()["spilled"] > before
    assert spill.stats()["peak_resident_bytes"] == resident  # nothing more was held in memory
    a, b = ram.tensors(), disk.tensors()
    for name in ("d0", "d1", "d2", "d3", "u0", "u3"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    del disk
    gc.collect()
    assert os.listdir(tmp_path) == []

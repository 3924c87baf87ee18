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


@pytest.mark.parametrize("criterion", ["obs", "magnitude", "wanda"])
def test_shorter_paths_are_prefixes_of_longer_ones(criterion: str, rng: np.random.Generator) -> None:
    """A ratio without a budget stops each path at the ratio (group_paths' removals): the greedy
    order and errors are the first steps of the full path, so the plan is the same."""
    from spa_compiler.criteria.paths import group_paths
    from spa_compiler.groups.analysis import analyze
    from spa_compiler.ir import ModelIR

    model = ModelIR.from_proto(deep_mlp(rng, depth=3, hidden=80))
    calib = _calib(rng)
    groups = list(analyze(model).prunable)
    full = group_paths(model, groups, criterion, max_ratio=0.75, calibration=calib)
    short = group_paths(model, groups, criterion, max_ratio=0.75, calibration=calib,
                        removals={g.id: int(round(g.n_units * 0.25)) for g in groups})
    for g in groups:
        r = int(round(g.n_units * 0.25))
        assert len(short[g.id].order) == r < len(full[g.id].order)
        assert short[g.id].order == full[g.id].order[:r]
        np.testing.assert_allclose(short[g.id].errors, full[g.id].errors[:r + 1], rtol=1e-9, atol=1e-12)
        if criterion == "obs":
            for i, w in short[g.id].compensated(g.n_units - r).items():
                np.testing.assert_allclose(w, full[g.id].compensated(g.n_units - r)[i], rtol=1e-9, atol=1e-12)
        # a plan deeper than the short path is refused, not applied with fewer units removed
        with pytest.raises(ValueError, match="outside the path"):
            short[g.id].removed(g.n_units - r - 1)
        with pytest.raises(ValueError, match="outside the path"):
            short[g.id].compensated(g.n_units - r - 1)
        assert len(full[g.id].removed(g.n_units - r - 1)) == r + 1


def test_ratio_without_budget_gives_the_same_model_with_shorter_paths(rng: np.random.Generator,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from spa_compiler.methods import pruning

    dense = deep_mlp(rng)
    calib = _calib(rng)
    short, _ = _prune(dense, calib, sequential=2)
    real = pruning.PruningMethod.build

    def full_paths(*a, **kw):
        kw["share"] = None
        return real(*a, **kw)

    monkeypatch.setattr(pruning.PruningMethod, "build", staticmethod(full_paths))
    full, _ = _prune(dense, calib, sequential=2)
    a, b = short.tensors(), full.tensors()
    assert set(a) == set(b)
    compared = 0
    for name, t in a.items():
        v = getattr(t, "values", None)
        if v is not None and np.asarray(v).dtype.kind == "f":
            np.testing.assert_allclose(v, b[name].values, rtol=1e-6, atol=1e-7)
            compared += 1
    assert compared >= 8

"""Group paths in worker processes (criteria.parallel) equal the serial ones."""

from __future__ import annotations

import numpy as np
import pytest

from spa_compiler.criteria import parallel
from spa_compiler.criteria.paths import group_paths
from spa_compiler.groups.analysis import analyze
from spa_compiler.ir import ModelIR
from tests.passes.test_sequential_and_output_error import _calib, deep_mlp


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_paths_in_workers_equal_serial_paths(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ModelIR.from_proto(deep_mlp(rng, depth=3, hidden=96))
    calib = _calib(rng)
    groups = list(analyze(model).prunable)
    monkeypatch.setenv("SPA_COMPILER_DEVICE", "cpu")
    monkeypatch.setenv("SPA_COMPILER_WORKERS", "1")
    serial = group_paths(model, groups, "obs", max_ratio=0.75, calibration=calib)
    monkeypatch.setenv("SPA_COMPILER_WORKERS", "2")
    monkeypatch.setattr(parallel, "MIN_WORK", 0.0)
    seen = []
    real = parallel.PathPool.results

    def spy(self, progress=None):
        out = real(self, progress)
        seen.append(len(out))
        return out

    monkeypatch.setattr(parallel.PathPool, "results", spy)
    ticks = []
    par = group_paths(model, groups, "obs", max_ratio=0.75, calibration=calib,
                      progress=lambda task, done, total: ticks.append((task, done, total)))
    assert seen == [len(groups)]  # every path ran in the workers
    assert list(par) == list(serial)  # the groups' order
    for gid, p in serial.items():
        assert par[gid].order == p.order
        # equal to rounding: a worker's BLAS runs one thread, the parent's two (other sum orders)
        np.testing.assert_allclose(par[gid].errors, p.errors, rtol=1e-12, atol=1e-18)
        for i, w in p.compensated(p.n_units - 10).items():
            np.testing.assert_array_equal(par[gid].compensated(p.n_units - 10)[i], w)  # same H: same re-fit
    assert ticks[-1][1] == ticks[-1][2]  # progress reached the total


def test_small_work_stays_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPA_COMPILER_WORKERS", "2")
    monkeypatch.setenv("SPA_COMPILER_DEVICE", "cpu")
    fn = group_paths  # any callable: not run here
    assert parallel.PathPool.for_groups([(64 * 64, 48), (64 * 64, 48)], fn) is None
    assert parallel.PathPool.for_groups([(4096 ** 2, 3000)], fn) is None  # one group: nothing to spread
    assert parallel.PathPool.for_groups([(4096 ** 2, 3000)] * 2, fn) is not None
    monkeypatch.setenv("SPA_COMPILER_WORKERS", "1")
    assert parallel.PathPool.for_groups([(4096 ** 2, 3000)] * 2, fn) is None

"""criteria.nm against brute force on small matrices.

* nm_mask is optimal for its score: no other n:m mask keeps a higher summed score (all masks of a
  tiny row enumerated);
* SparseGPT's update for a fixed mask equals the least-squares solves it stands for: the joint
  re-fit of every kept weight when the pruned columns come first (nothing frozen early), and in
  general the sequence "prune column i, re-fit the columns after i" solved directly with lstsq;
* every result satisfies the pattern exactly; the chosen masks beat magnitude's in output error.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_compiler.criteria import nm as nmath


def _all_row_masks(cols: int, n: int, m: int) -> list[np.ndarray]:
    per_group = [np.array([i in c for i in range(m)]) for c in itertools.combinations(range(m), n)]
    return [np.concatenate(g) for g in itertools.product(per_group, repeat=cols // m)]


@pytest.mark.parametrize(("n", "m", "cols"), [(2, 4, 8), (1, 4, 8), (4, 8, 8), (3, 4, 8), (1, 2, 6)])
def test_mask_is_optimal_for_its_score(rng: np.random.Generator, n: int, m: int, cols: int) -> None:
    scores = rng.standard_normal((5, cols))
    scores[0, :m] = 1.0  # ties
    mask = nmath.nm_mask(scores, n, m)
    for r in range(scores.shape[0]):
        best = max(float(scores[r][cand].sum()) for cand in _all_row_masks(cols, n, m))
        assert float(scores[r][mask[r]].sum()) == pytest.approx(best)
    assert (mask.reshape(5, -1, m).sum(axis=2) == n).all()


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 6), rows=st.integers(1, 5), nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (1, 4)]),
       seed=st.integers(0, 10_000))
def test_mask_keeps_exactly_n_per_group_and_is_idempotent(groups: int, rows: int, nm: tuple[int, int],
                                                          seed: int) -> None:
    n, m = nm
    w = np.random.default_rng(seed).standard_normal((rows, groups * m))
    out, mask = nmath.magnitude_nm(w, n, m)
    assert (mask.reshape(rows, groups, m).sum(axis=2) == n).all()
    assert nmath.satisfies_pattern(out, n, m)
    again, _ = nmath.magnitude_nm(out, n, m)
    np.testing.assert_array_equal(again, out)
    kept_min = np.where(mask, np.abs(w), np.inf).reshape(rows, groups, m).min(axis=2)
    dropped_max = np.where(~mask, np.abs(w), -np.inf).reshape(rows, groups, m).max(axis=2)
    assert (kept_min >= dropped_max).all()


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        nmath.nm_mask(np.ones((2, 6)), 2, 4)
    with pytest.raises(ValueError, match="0 < n < m"):
        nmath.parse_pattern("4:4")
    with pytest.raises(ValueError, match="n:m"):
        nmath.parse_pattern("two:four")
    assert nmath.parse_pattern(" 2:4 ") == (2, 4)
    assert not nmath.satisfies_pattern(np.ones((2, 6)), 2, 4)


def _data(rng: np.random.Generator, rows: int, cols: int, samples: int = 64) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((samples, cols)) @ rng.standard_normal((cols, cols))  # correlated features
    return rng.standard_normal((rows, cols)), x


def test_sparsegpt_equals_joint_least_squares_when_pruned_columns_come_first(rng: np.random.Generator) -> None:
    rows, cols = 3, 8
    w, x = _data(rng, rows, cols)
    h = x.T @ x
    # one block over all columns, one 4:8 group whose pruned columns 0..3 precede the kept 4..7:
    # no kept column is frozen before a pruned one, so the update is the joint re-fit
    mask = np.zeros((rows, cols), dtype=bool)
    mask[:, 4:] = True  # 4:8, pruned columns 0..3 first
    out, keep = nmath.sparsegpt_nm(w, h, 4, 8, blocksize=cols, damp=0.0, mask=mask)
    np.testing.assert_array_equal(keep, mask)
    for r in range(rows):
        kept = np.nonzero(mask[r])[0]
        sol, *_ = np.linalg.lstsq(x[:, kept], x @ w[r], rcond=None)
        expect = np.zeros(cols)
        expect[kept] = sol
        np.testing.assert_allclose(out[r], expect, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("blocksize", [4, 8, 128])
def test_sparsegpt_equals_sequential_least_squares_for_any_mask(rng: np.random.Generator, blocksize: int) -> None:
    rows, cols, n, m = 4, 12, 2, 4
    w, x = _data(rng, rows, cols)
    h = x.T @ x
    mask = nmath.nm_mask(rng.standard_normal((rows, cols)), n, m)
    out, keep = nmath.sparsegpt_nm(w, h, n, m, blocksize=blocksize, damp=0.0, mask=mask)
    np.testing.assert_array_equal(keep, mask)
    for r in range(rows):
        cur = w[r].copy()
        for i in range(cols):
            if mask[r, i]:
                continue  # kept: frozen at its current value
            target = x @ cur
            cur[i] = 0.0
            later = np.arange(i + 1, cols)
            if later.size:  # re-fit only the later columns, earlier ones frozen
                fixed = x[:, : i + 1] @ cur[: i + 1]
                sol, *_ = np.linalg.lstsq(x[:, later], target - fixed, rcond=None)
                cur[later] = sol
        np.testing.assert_allclose(out[r], cur, rtol=1e-6, atol=1e-8)


def test_sparsegpt_mask_choice_satisfies_pattern_and_beats_magnitude(rng: np.random.Generator) -> None:
    rows, cols = 32, 64
    w, x = _data(rng, rows, cols, samples=256)
    h = x.T @ x
    for n, m in ((2, 4), (4, 8), (1, 4)):
        out, keep = nmath.sparsegpt_nm(w, h, n, m, blocksize=16)
        assert nmath.satisfies_pattern(out, n, m)
        assert (keep.reshape(rows, -1, m).sum(axis=2) == n).all()
        assert not out[~keep].any()
        mag, _ = nmath.magnitude_nm(w, n, m)
        wan, _ = nmath.wanda_nm(w, np.linalg.norm(x, axis=0), n, m)
        e_sgpt = nmath.relative_error(w, out, h)
        assert e_sgpt < nmath.relative_error(w, wan, h) <= 1.0
        assert e_sgpt < nmath.relative_error(w, mag, h)
        # the error is ||(W - W')X||^2 / ||WX||^2
        direct = float(((x @ (w - out).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
        assert e_sgpt == pytest.approx(direct, rel=1e-9)


def test_sparsegpt_handles_dead_features(rng: np.random.Generator) -> None:
    w, x = _data(rng, 4, 8)
    x[:, 3] = 0.0
    out, _ = nmath.sparsegpt_nm(w, x.T @ x, 2, 4)
    assert np.isfinite(out).all() and nmath.satisfies_pattern(out, 2, 4)


def test_relative_error_of_magnitude_is_weight_energy() -> None:
    w = np.array([[3.0, -1.0, 0.5, 2.0]])
    out, _ = nmath.magnitude_nm(w, 2, 4)
    np.testing.assert_array_equal(out, [[3.0, 0.0, 0.0, 2.0]])
    assert nmath.relative_error(w, out) == pytest.approx((1 + 0.25) / (9 + 1 + 0.25 + 4))

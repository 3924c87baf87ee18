"""Structured OBS (spa_compiler.criteria.obs) against brute-force least squares.

Oracle: for W (out, in), X (in, n) with n > in and H = 2 X X^T (no damping), removing a set S of
columns with the OBS update must give exactly argmin_{W'[:, S] = 0} ||W X - W' X||_F^2 (computed
with np.linalg.lstsq on the kept columns of X), and the predicted error must equal the achieved
loss.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_compiler.criteria.obs import (
    ObsPath,
    greedy_prune,
    group_errors,
    inverse_hessian,
    prepare_hessian,
    remove_group,
    solve_kept,
    uniform_levels,
    wanda_scores,
)
from spa_compiler.errors import PreconditionError

Arr = npt.NDArray[np.float64]


def _problem(rng: np.random.Generator, n_out: int, n_in: int, n: int) -> tuple[Arr, Arr, Arr]:
    """Random W, a well-conditioned X with n > in samples, and H = 2 X X^T."""
    w = rng.standard_normal((n_out, n_in))
    mix = np.eye(n_in) + 0.3 * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = mix @ rng.standard_normal((n_in, n))  # correlated features, still full rank
    return w, x, 2.0 * x @ x.T


def _lstsq_kept(w: Arr, x: Arr, keep: npt.ArrayLike) -> Arr:
    """argmin over W' supported on `keep` of ||W X - W' X||^2, by lstsq on the kept rows of X."""
    keep = np.asarray(keep, dtype=np.intp)
    out = np.zeros_like(w)
    if keep.size:
        sol = np.linalg.lstsq(x[keep].T, (w @ x).T, rcond=None)[0]  # (K, out)
        out[:, keep] = sol.T
    return out


def _loss(w: Arr, w_new: Arr, x: Arr) -> float:
    return float(np.sum(((w - w_new) @ x) ** 2))


def _partition(rng: np.random.Generator, n_in: int, size: int) -> list[npt.NDArray[np.intp]]:
    perm = rng.permutation(n_in)
    return [np.sort(perm[i : i + size]) for i in range(0, n_in - n_in % size, size)]


def _close(a: Arr, b: Arr, scale: float = 1.0) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9 * scale)


# ------------------------------------------------------------------------ one step vs lstsq


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_remove_group_equals_lstsq_and_predicted_error(size: int) -> None:
    rng = np.random.default_rng(size)
    w, x, h = _problem(rng, n_out=7, n_in=15, n=60)
    groups = _partition(rng, 15, size)
    hinv = inverse_hessian(prepare_hessian(h))
    errs = group_errors(w, hinv, groups)
    for gid, s in enumerate(groups):
        w_new, hinv_new = remove_group(w, hinv, s)
        keep = np.setdiff1d(np.arange(15), s)
        expect = _lstsq_kept(w, x, keep)
        _close(w_new, expect, np.abs(w).max())
        assert np.all(w_new[:, s] == 0.0)
        achieved = _loss(w, w_new, x)
        assert errs[gid] == pytest.approx(achieved, rel=1e-8)
        # Downdated inverse = inverse of H on the kept columns, zero elsewhere.
        expect_inv = np.zeros_like(h)
        expect_inv[np.ix_(keep, keep)] = np.linalg.inv(h[np.ix_(keep, keep)])
        np.testing.assert_allclose(hinv_new, expect_inv, atol=1e-10 * np.abs(expect_inv).max())


def test_error_scale_convention() -> None:
    """E_S with H = 2 X X^T is ||dW X||^2; with H/n (the accumulator's) the per-sample mean."""
    rng = np.random.default_rng(0)
    w, x, h = _problem(rng, 4, 6, 40)
    s = [np.array([1, 4])]
    e_full = group_errors(w, inverse_hessian(h), s)[0]
    e_mean = group_errors(w, inverse_hessian(h / x.shape[1]), s)[0]
    assert e_mean == pytest.approx(e_full / x.shape[1], rel=1e-10)
    # The update itself does not depend on the scale of H.
    a, _ = remove_group(w, inverse_hessian(h), s[0])
    b, _ = remove_group(w, inverse_hessian(7.0 * h), s[0])
    _close(a, b)


def test_solve_kept_equals_lstsq() -> None:
    rng = np.random.default_rng(1)
    w, x, h = _problem(rng, 5, 12, 50)
    keep = rng.choice(12, size=7, replace=False)
    _close(solve_kept(w, h, keep), _lstsq_kept(w, x, keep), np.abs(w).max())
    np.testing.assert_array_equal(solve_kept(w, h, []), np.zeros_like(w))
    _close(solve_kept(w, h, np.arange(12)), w)


def test_damping_is_ridge_towards_original_weights() -> None:
    """H + mu I minimizes ||dW X||^2 + mu/2 ||dW||^2: lstsq on X augmented by sqrt(mu/2) I."""
    rng = np.random.default_rng(2)
    w, x, h = _problem(rng, 4, 10, 30)
    damp = 0.05
    mu = damp * np.mean(np.diag(h))
    keep = np.array([0, 2, 3, 5, 8, 9])
    x_aug = np.concatenate([x, np.sqrt(mu / 2.0) * np.eye(10)], axis=1)
    expect = _lstsq_kept(w, x_aug, keep)
    _close(solve_kept(w, h, keep, damp=damp), expect, np.abs(w).max())
    # greedy with the same damping reaches the same weights and predicts the augmented loss
    groups = [np.array([c]) for c in range(10)]
    path = greedy_prune(w, h, groups, levels=[4], damp=damp)
    kept = path.kept_columns(4)
    _close(path.weight(4), _lstsq_kept(w, x_aug, kept), np.abs(w).max())
    assert path.errors[0] == pytest.approx(_loss(w, path.weight(4), x_aug), rel=1e-8)


# ----------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("size", [1, 3])
def test_greedy_each_level_is_lstsq_of_cumulative_kept_set(size: int) -> None:
    rng = np.random.default_rng(10 + size)
    n_in = 12
    w, x, h = _problem(rng, 6, n_in, 80)
    groups = _partition(rng, n_in, size)
    g = len(groups)
    path = greedy_prune(w, h, groups, levels=range(g + 1))
    assert path.levels == tuple(range(g + 1))
    assert sorted(path.order.tolist()) == list(range(g))
    prev = -1.0
    for level in range(g + 1):
        kept = path.kept_columns(level)
        expect = _lstsq_kept(w, x, kept)
        _close(path.weight(level), expect, np.abs(w).max())
        achieved = _loss(w, path.weight(level), x)
        assert path.errors[level] == pytest.approx(achieved, rel=1e-7, abs=1e-9)
        assert path.error(level) == pytest.approx(path.errors[level])
        assert path.errors[level] >= prev - 1e-12  # cumulative errors never decrease
        prev = path.errors[level]
    assert np.allclose(path.weight(g), 0.0)


def test_greedy_picks_cheapest_group_each_step() -> None:
    """Each step's choice minimizes the achieved lstsq loss among the remaining groups."""
    rng = np.random.default_rng(20)
    w, x, h = _problem(rng, 5, 10, 50)
    groups = _partition(rng, 10, 2)
    path = greedy_prune(w, h, groups, levels=[len(groups)])
    removed: list[int] = []
    for step, choice in enumerate(path.order.tolist()):
        base = _lstsq_kept(
            w,
            x,
            np.setdiff1d(
                np.arange(10), np.concatenate([groups[i] for i in removed]) if removed else []
            ),
        )
        costs = {}
        for cand in set(range(len(groups))) - set(removed):
            cols = np.concatenate([groups[i] for i in [*removed, cand]])
            costs[cand] = _loss(base, _lstsq_kept(w, x, np.setdiff1d(np.arange(10), cols)), x)
        assert costs[choice] == pytest.approx(min(costs.values()), rel=1e-7)
        assert path.step_errors[step] == pytest.approx(costs[choice], rel=1e-7, abs=1e-10)
        removed.append(choice)


def test_greedy_snapshots_dtype_and_lazy_resolve() -> None:
    rng = np.random.default_rng(3)
    w, _, h = _problem(rng, 8, 16, 64)
    w32 = w.astype(np.float32)
    groups = _partition(rng, 16, 2)
    levels = uniform_levels(len(groups), 4)
    path = greedy_prune(w32, h, groups, levels=levels)
    assert path.snapshots is not None and set(path.snapshots) == set(levels)
    assert all(s.dtype == np.float32 for s in path.snapshots.values())
    np.testing.assert_array_equal(path.weight(0), w32)
    lazy = greedy_prune(w32, h, groups, levels=levels, snapshots=False)
    assert lazy.snapshots is None
    np.testing.assert_array_equal(lazy.order, path.order)
    for level in levels:
        np.testing.assert_allclose(lazy.weight(level), path.weight(level), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            path.weight(level, resolve=True), path.weight(level), rtol=1e-4, atol=1e-5
        )
    # a level in between the recorded ones is re-solved
    assert lazy.weight(1).shape == w.shape
    with pytest.raises(ValueError, match="outside"):
        path.weight(levels[-1] + 1)


def test_ungrouped_columns_are_never_removed() -> None:
    rng = np.random.default_rng(4)
    w, x, h = _problem(rng, 3, 9, 40)
    groups = [np.array([0, 1]), np.array([4]), np.array([6, 7, 8])]
    path = greedy_prune(w, h, groups, levels=[0, 3])
    np.testing.assert_array_equal(path.kept_columns(3), [2, 3, 5])
    _close(path.weight(3), _lstsq_kept(w, x, [2, 3, 5]), np.abs(w).max())
    np.testing.assert_array_equal(
        np.sort(path.kept_groups(1)), np.setdiff1d(np.arange(3), path.order[:1])
    )


def test_progress_callback() -> None:
    rng = np.random.default_rng(5)
    w, _, h = _problem(rng, 3, 6, 20)
    calls: list[tuple[int, int]] = []
    greedy_prune(
        w, h, [[c] for c in range(6)], levels=[3], progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


# ------------------------------------------------------------------------- singular cases


def test_dead_feature_is_free_to_remove() -> None:
    """A feature that is always 0 makes H singular; it must cost ~0 and be removed first."""
    rng = np.random.default_rng(6)
    w, x, _ = _problem(rng, 4, 8, 40)
    x[3] = 0.0
    h = 2.0 * x @ x.T
    groups = [[c] for c in range(8)]
    path = greedy_prune(w, h, groups, levels=[0, 1, 4])
    assert path.order[0] == 3
    assert path.errors[1] == pytest.approx(0.0, abs=1e-9)
    for level in (1, 4):
        kept = path.kept_columns(level)
        achieved = _loss(w, path.weight(level), x)
        best = _loss(w, _lstsq_kept(w, x, kept), x)
        assert achieved == pytest.approx(best, rel=1e-7, abs=1e-9)
        assert path.errors[path.levels.index(level)] == pytest.approx(achieved, rel=1e-6, abs=1e-8)


def test_fully_dead_layer_and_damped_accumulator_convention() -> None:
    w = np.ones((2, 3))
    path = greedy_prune(w, np.zeros((3, 3)), [[0], [1], [2]], levels=[3])
    assert path.errors[0] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(path.weight(3), 0.0)


def test_removed_group_block_is_singular_and_scores_inf() -> None:
    rng = np.random.default_rng(7)
    w, _, h = _problem(rng, 3, 6, 30)
    hinv = inverse_hessian(h)
    s = np.array([1, 2])
    w2, hinv2 = remove_group(w, hinv, s)
    errs = group_errors(w2, hinv2, [s, np.array([1]), np.array([0, 3])])
    assert np.isinf(errs[0]) and np.isinf(errs[1]) and np.isfinite(errs[2])
    # removing it again falls back to the pseudo-inverse and changes nothing
    w3, hinv3 = remove_group(w2, hinv2, s)
    _close(w3, w2)
    _close(hinv3, hinv2)


def test_indefinite_hessian_is_a_precondition_error() -> None:
    h = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(PreconditionError, match="not positive definite"):
        greedy_prune(np.ones((2, 2)), h, [[0], [1]], levels=[1])
    with pytest.raises(PreconditionError, match="NaN"):
        prepare_hessian(np.full((2, 2), np.nan))


def test_nearly_singular_hessian_is_rescued_by_escalated_damping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v = np.array([1.0, 1.0, 1.0])
    h = np.outer(v, v) - 1e-9 * np.eye(3)  # PSD up to rounding, not PD
    with caplog.at_level("WARNING", logger="spa_compiler.criteria.obs"):
        hinv = inverse_hessian(prepare_hessian(h))
    assert np.all(np.isfinite(hinv))
    assert "adding damping" in caplog.text


# ---------------------------------------------------------------------------- validation


def test_input_validation() -> None:
    w = np.ones((2, 4))
    h = np.eye(4)
    with pytest.raises(ValueError, match="overlaps"):
        greedy_prune(w, h, [[0, 1], [1, 2]], levels=[1])
    with pytest.raises(ValueError, match="levels"):
        greedy_prune(w, h, [[0], [1]], levels=[3])
    with pytest.raises(ValueError, match="empty"):
        group_errors(w, h, [[]])
    with pytest.raises(ValueError, match="outside"):
        group_errors(w, h, [[4]])
    with pytest.raises(ValueError, match="repeats"):
        group_errors(w, h, [[1, 1]])
    with pytest.raises(ValueError, match="match"):
        group_errors(w, np.eye(3), [[0]])
    with pytest.raises(ValueError, match="distinct"):
        solve_kept(w, h, [0, 0])
    # overlapping groups are fine when scored independently
    assert group_errors(w, h, [[0, 1], [1, 2]]).shape == (2,)


def test_uniform_levels() -> None:
    assert uniform_levels(32, 16) == list(range(0, 33, 2))
    assert uniform_levels(3, 16) == [0, 1, 2, 3]
    assert uniform_levels(64, 4, max_fraction=0.5) == [0, 8, 16, 24, 32]


# ---------------------------------------------------------------------- baseline criteria


def test_wanda_scores() -> None:
    w = np.array([[1.0, -2.0, 0.0, 3.0], [0.0, 2.0, -1.0, 4.0]])
    groups = [[0, 1], [2], [3]]
    norms = np.array([1.0, 0.5, 2.0, 0.0])
    np.testing.assert_allclose(wanda_scores(w, norms, groups), [1 + 2, 2.0, 0.0])
    # a Hessian gives sqrt(diag): H = diag(norms^2) -> the same scores
    np.testing.assert_allclose(wanda_scores(w, np.diag(norms**2), groups), [3.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="stats"):
        wanda_scores(w, np.ones(3), groups)


# ---------------------------------------------------------------------- property tests


@settings(max_examples=40, deadline=None)
@given(
    n_out=st.integers(1, 5),
    size=st.integers(1, 4),
    n_groups=st.integers(1, 5),
    n_free=st.integers(0, 2),
    extra=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_greedy_matches_lstsq(
    n_out: int, size: int, n_groups: int, n_free: int, extra: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n_in = size * n_groups + n_free
    w, x, h = _problem(rng, n_out, n_in, n_in + extra)
    perm = rng.permutation(n_in)
    groups = [perm[i * size : (i + 1) * size] for i in range(n_groups)]
    hinv = inverse_hessian(prepare_hessian(h))
    # one random group: update and predicted error vs lstsq
    gid = int(rng.integers(n_groups))
    w1, _ = remove_group(w, hinv, groups[gid])
    keep = np.setdiff1d(np.arange(n_in), groups[gid])
    scale = np.abs(w).max() * max(1.0, float(np.linalg.cond(x @ x.T)) * 1e-6)
    np.testing.assert_allclose(w1, _lstsq_kept(w, x, keep), rtol=1e-6, atol=1e-7 * scale)
    e = group_errors(w, hinv, groups)[gid]
    assert e == pytest.approx(_loss(w, w1, x), rel=1e-6, abs=1e-9)
    # greedy over all levels
    path = greedy_prune(w, h, groups, levels=range(n_groups + 1))
    assert np.all(np.diff(path.errors) >= -1e-9)
    for level in range(n_groups + 1):
        kept = path.kept_columns(level)
        np.testing.assert_allclose(
            path.weight(level), _lstsq_kept(w, x, kept), rtol=1e-6, atol=1e-7 * scale
        )
        assert path.errors[level] == pytest.approx(
            _loss(w, path.weight(level), x), rel=1e-6, abs=1e-9
        )


def test_obspath_is_a_frozen_record() -> None:
    rng = np.random.default_rng(8)
    w, _, h = _problem(rng, 2, 4, 10)
    path = greedy_prune(w, h, [[0], [1], [2, 3]], levels=[0, 2])
    assert isinstance(path, ObsPath)
    assert path.errors.shape == (2,)
    with pytest.raises(AttributeError):
        path.levels = (1,)  # type: ignore[misc]


def _naive_greedy(w: Arr, h: Arr, groups: list[npt.NDArray[np.intp]], steps: int) -> list[int]:
    """Reference loop: full-size group_errors + remove_group at every step."""
    hinv = inverse_hessian(prepare_hessian(h))
    cur = w.copy()
    left = list(range(len(groups)))
    order = []
    for _ in range(steps):
        errs = group_errors(cur, hinv, [groups[i] for i in left])
        j = left.pop(int(np.argmin(errs)))
        order.append(j)
        cur, hinv = remove_group(cur, hinv, groups[j])
    return order


@pytest.mark.parametrize("sizes", [[1], [3], [1, 2, 4]])
def test_lazy_greedy_equals_naive_loop_across_folds_and_compactions(sizes: list[int]) -> None:
    """Long paths cross several lazy folds (every 64 columns) and compactions (every 25%)."""
    rng = np.random.default_rng(sum(sizes))
    groups: list[npt.NDArray[np.intp]] = []
    start = 0
    while start < 230:
        size = sizes[len(groups) % len(sizes)]
        groups.append(np.arange(start, start + size))
        start += size
    n_in = start + 3  # three columns in no group
    w, x, h = _problem(rng, 20, n_in, 2 * n_in)
    steps = int(0.9 * len(groups))
    levels = list(range(0, steps + 1, max(1, steps // 7))) + [steps]
    path = greedy_prune(w, h, groups, levels=levels)
    assert path.order.tolist() == _naive_greedy(w, h, groups, steps)
    for i, level in enumerate(path.levels):
        expect = _lstsq_kept(w, x, path.kept_columns(level))
        np.testing.assert_allclose(
            path.weight(level), expect, rtol=1e-6, atol=1e-8 * np.abs(w).max()
        )
        assert path.errors[i] == pytest.approx(_loss(w, path.weight(level), x), rel=1e-6)


@pytest.mark.parametrize("with_scipy", [True, False])
def test_inverse_hessian_with_and_without_scipy(
    with_scipy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    if not with_scipy:
        monkeypatch.setitem(sys.modules, "scipy.linalg", None)  # import fails -> numpy path
    rng = np.random.default_rng(9)
    _, _, h = _problem(rng, 1, 30, 60)
    hinv = inverse_hessian(h)
    np.testing.assert_allclose(hinv, np.linalg.inv(h), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(hinv, hinv.T)
    with pytest.raises(PreconditionError):
        inverse_hessian(np.array([[1.0, 2.0], [2.0, 1.0]]))

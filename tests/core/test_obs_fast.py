"""The fast greedy OBS paths (lazy downdates, incremental Grams, joint layers) against the
reference loop: full-size `group_errors` + `remove_group` at every step, summed over layers.

Same inputs, same seed: the removal orders must be identical and the step errors equal to
rounding, across lazy folds (every max(64, in/8) columns) and compactions (every 25%).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from spa_compiler.criteria.obs import (
    _as_groups,
    group_errors,
    inverse_hessian,
    joint_greedy_order,
    prepare_hessian,
    remove_group,
)

Arr = npt.NDArray[np.float64]


def _layer(rng: np.random.Generator, n_out: int, n_in: int) -> tuple[Arr, Arr]:
    w = rng.standard_normal((n_out, n_in))
    mix = np.eye(n_in) + 0.3 * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = mix @ rng.standard_normal((n_in, 2 * n_in))
    return w, prepare_hessian(2.0 * x @ x.T / x.shape[1], 0.01)


def _reference(ws: list[Arr], hs: list[Arr], groups: list[list[npt.NDArray[np.intp]]], steps: int) -> tuple[list[int], list[float]]:
    """The slow path the fast one replaces (criteria.paths before issue 12)."""
    cur = [w.copy() for w in ws]
    hinv = [inverse_hessian(h) for h in hs]
    left = list(range(len(groups[0])))
    order, errs = [], []
    for _ in range(steps):
        total = np.zeros(len(left))
        for v in range(len(ws)):
            total += group_errors(cur[v], hinv[v], [groups[v][i] for i in left])
        k = int(np.argmin(total))
        j = left.pop(k)
        order.append(j)
        errs.append(float(total[k]))
        for v in range(len(ws)):
            cur[v], hinv[v] = remove_group(cur[v], hinv[v], groups[v][j])
    return order, errs


def _groups(n_groups: int, size: int, extra: int = 0) -> list[npt.NDArray[np.intp]]:
    return [np.arange(g * size, (g + 1) * size) for g in range(n_groups)]


def _check_joint_against_reference(sizes: tuple[int, ...]) -> tuple[list, list, list]:
    """Layers with groups of `sizes` columns (two columns in no group) reading one stream: the joint
    greedy order and step errors equal the reference loop's. Returns the layers."""
    rng = np.random.default_rng(len(sizes) * 10 + sum(sizes))
    n_groups = 90
    ws, hs, gs = [], [], []
    for i, s in enumerate(sizes):
        w, h = _layer(rng, 12 + 5 * i, n_groups * s + 2)
        ws.append(w)
        hs.append(h)
        gs.append(_groups(n_groups, s))
    steps = int(0.9 * n_groups)
    order, step_err = joint_greedy_order(ws, hs, gs, steps)
    ref_order, ref_err = _reference(ws, hs, gs, steps)
    assert order.tolist() == ref_order
    np.testing.assert_allclose(step_err, ref_err, rtol=1e-7, atol=1e-12)
    return ws, hs, gs


@pytest.mark.parametrize("sizes", [(1, 1), (1, 9), (4, 4, 1)])
def test_joint_greedy_equals_reference_loop(sizes: tuple[int, ...]) -> None:
    """A residual stream read by several consumers (1x1 conv, 3x3 conv, linear): one order."""
    _check_joint_against_reference(sizes)


def test_joint_greedy_single_layer_matches_multi_layer_of_one() -> None:
    rng = np.random.default_rng(3)
    w, h = _layer(rng, 16, 75)
    groups = _groups(25, 3)
    order, err = joint_greedy_order([w], [h], [groups], 20)
    ref_order, ref_err = _reference([w], [h], [groups], 20)
    assert order.tolist() == ref_order
    np.testing.assert_allclose(err, ref_err, rtol=1e-7)


def test_joint_greedy_rejects_mismatched_layers() -> None:
    w, h = _layer(np.random.default_rng(0), 4, 6)
    with pytest.raises(ValueError, match="same number of groups"):
        joint_greedy_order([w, w], [h, h], [_groups(3, 2), _groups(2, 2)], 1)
    with pytest.raises(ValueError, match="n_remove"):
        joint_greedy_order([w], [h], [_groups(3, 2)], 4)
    with pytest.raises(ValueError, match="overlaps"):
        joint_greedy_order([w], [h], [[np.array([0, 1]), np.array([1, 2])]], 1)


def test_as_groups_vectorized_checks_name_the_group() -> None:
    with pytest.raises(ValueError, match="group 2 is empty"):
        _as_groups([[0], [1], []], 4, disjoint=False)
    with pytest.raises(ValueError, match="group 1 has columns outside"):
        _as_groups([[0], [4]], 4, disjoint=False)
    with pytest.raises(ValueError, match="group 1 repeats"):
        _as_groups([[0], [1, 1]], 4, disjoint=False)
    with pytest.raises(ValueError, match="group 1 overlaps"):
        _as_groups([[0, 1], [1, 2]], 4, disjoint=True)
    assert len(_as_groups([[0, 1], [1, 2]], 4, disjoint=False)) == 2


@pytest.mark.parametrize("sizes", [(1, 1), (1, 9), (4, 4, 1)])
def test_lazy_weight_state_equals_reference_loop(sizes: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide layers keep W lazily (W0 - A U^T, column norms updated from W^T a): the same orders
    as the reference loop, across folds, refreshes and compactions (every layer made 'wide')."""
    from spa_compiler.criteria import obs

    monkeypatch.setattr(obs, "WIDE_COLS", 1)
    monkeypatch.setenv("SPA_COMPILER_DEVICE", "cpu")
    ws, hs, gs = _check_joint_against_reference(sizes)
    # the compensated weights of a single-layer path (ObsPath.weight reads the lazy W)
    path = obs.greedy_prune(ws[0], hs[0], gs[0], levels=[0, 10, 40], snapshots=True)
    monkeypatch.setattr(obs, "WIDE_COLS", 10**9)
    eager = obs.greedy_prune(ws[0], hs[0], gs[0], levels=[0, 10, 40], snapshots=True)
    assert path.order.tolist() == eager.order.tolist()
    for lv in (10, 40):
        np.testing.assert_allclose(path.weight(lv), eager.weight(lv), rtol=1e-8, atol=1e-10)

"""SPDY-style level search (spa_compiler.search.knapsack) against brute force over every choice.

Oracle: on small instances, enumerate every combination of levels. With integer latencies and a
grid of 1 ms the DP must find exactly the brute-force optimum; with real-valued latencies it must
return a choice that truly meets the budget and is at least as good as the best choice with a
margin of one grid cell per group (the documented discretization loss).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_compiler.search.knapsack import (
    GroupOptions,
    Level,
    SearchResult,
    choose_levels,
    correct_budget,
)

TOL = 1e-9


def _brute(
    groups: Sequence[GroupOptions], base: float
) -> list[tuple[float, float, tuple[int, ...]]]:
    """(latency, error, level indices) of every choice."""
    out = []
    for idx in itertools.product(*(range(len(g.levels)) for g in groups)):
        lat = base + math.fsum(g.levels[i].latency_ms for g, i in zip(groups, idx, strict=True))
        err = math.fsum(g.levels[i].error for g, i in zip(groups, idx, strict=True))
        out.append((lat, err, idx))
    return out


def _check_result_consistent(groups: Sequence[GroupOptions], base: float, r: SearchResult) -> None:
    """The reported latency and error are those of the reported levels."""
    by_id = {g.group_id: {lv.level_id: lv for lv in g.levels} for g in groups}
    assert set(r.levels) == set(by_id)
    lat = base + math.fsum(by_id[g][lid].latency_ms for g, lid in r.levels.items())
    err = math.fsum(by_id[g][lid].error for g, lid in r.levels.items())
    assert r.predicted_ms == pytest.approx(lat, abs=1e-9)
    assert r.error == pytest.approx(err, abs=1e-9)


def _groups(draw: st.DrawFn, *, integer: bool) -> list[GroupOptions]:
    n_groups = draw(st.integers(1, 4))
    groups = []
    for g in range(n_groups):
        n_levels = draw(st.integers(1, 4))
        levels = []
        for i in range(n_levels):
            lat = (
                draw(st.integers(0, 12)) if integer else draw(st.floats(0.0, 5.0, allow_nan=False))
            )
            err = (
                draw(st.integers(0, 20)) if integer else draw(st.floats(0.0, 10.0, allow_nan=False))
            )
            levels.append(Level(i, float(lat), float(err)))
        groups.append(GroupOptions(f"g{g}", levels))
    return groups


@st.composite
def int_instances(draw: st.DrawFn) -> tuple[list[GroupOptions], float, float]:
    groups = _groups(draw, integer=True)
    base = float(draw(st.integers(0, 5)))
    budget = float(draw(st.integers(0, 60)))
    return groups, base, budget


@st.composite
def float_instances(draw: st.DrawFn) -> tuple[list[GroupOptions], float, float]:
    groups = _groups(draw, integer=False)
    base = draw(st.floats(0.0, 3.0, allow_nan=False))
    budget = draw(st.floats(0.0, 25.0, allow_nan=False))
    return groups, base, budget


@settings(max_examples=300, deadline=None)
@given(int_instances())
def test_dp_matches_brute_force_on_an_exact_grid(
    inst: tuple[list[GroupOptions], float, float],
) -> None:
    groups, base, budget = inst
    base_prime = base + sum(min(lv.latency_ms for lv in g.levels) for g in groups)
    slack = int(budget - base_prime)
    resolution = max(
        slack, 1
    )  # one cell per millisecond: integer latencies are represented exactly
    r = choose_levels(groups, budget, base, resolution=resolution)
    _check_result_consistent(groups, base, r)
    choices = _brute(groups, base)
    fits = [c for c in choices if c[0] <= budget + TOL]
    assert r.min_latency_ms == pytest.approx(min(c[0] for c in choices))
    if not fits:
        assert r.status == "over-budget" and not r.feasible
        assert r.predicted_ms == pytest.approx(r.min_latency_ms)
        return
    best_err = min(c[1] for c in fits)
    assert r.feasible
    assert r.error == pytest.approx(best_err)
    assert r.predicted_ms <= budget + TOL
    # tie-break: among the minimum-error choices, the lowest latency
    assert r.predicted_ms == pytest.approx(min(c[0] for c in fits if abs(c[1] - best_err) <= 1e-9))


@settings(max_examples=300, deadline=None)
@given(float_instances(), st.sampled_from([7, 50, 400]))
def test_dp_is_safe_and_near_optimal_on_real_latencies(
    inst: tuple[list[GroupOptions], float, float], resolution: int
) -> None:
    groups, base, budget = inst
    r = choose_levels(groups, budget, base, resolution=resolution)
    _check_result_consistent(groups, base, r)
    choices = _brute(groups, base)
    fits = [c for c in choices if c[0] <= budget + TOL]
    if not fits:
        assert r.status == "over-budget"
        return
    assert r.feasible
    assert r.predicted_ms <= budget + TOL, "upper rounding must never let the DP exceed the budget"
    assert r.error >= min(c[1] for c in fits) - TOL, "cannot beat the exact optimum"
    margin = len(groups) * r.grid_ms
    tighter = [c for c in fits if c[0] <= budget - margin - TOL]
    if tighter:
        assert r.error <= min(c[1] for c in tighter) + TOL


@settings(max_examples=200, deadline=None)
@given(float_instances(), st.floats(0.0, 15.0, allow_nan=False))
def test_error_bound(inst: tuple[list[GroupOptions], float, float], max_error: float) -> None:
    groups, base, budget = inst
    resolution = 300
    r = choose_levels(groups, budget, base, resolution=resolution, max_error=max_error)
    _check_result_consistent(groups, base, r)
    choices = _brute(groups, base)
    within = [c for c in choices if c[1] <= max_error + TOL]
    if r.feasible:
        assert r.error <= max_error + TOL and r.predicted_ms <= budget + TOL
        return
    assert r.reachable_ms == pytest.approx(r.predicted_ms)
    if r.status == "error-bound":
        assert any(c[0] <= budget + TOL for c in choices), (
            "error-bound means the budget alone is reachable"
        )
    if within:
        # the reported choice respects the bound and is the fastest such up to the grid
        assert r.error <= max_error + TOL
        excess = sum(
            max(lv.latency_ms for lv in g.levels) - min(lv.latency_ms for lv in g.levels)
            for g in groups
        )
        cell = excess / resolution
        assert r.predicted_ms <= min(c[0] for c in within) + len(groups) * cell + TOL
        assert (
            min(c[0] for c in within) > budget - len(groups) * r.grid_ms - TOL or r.status == "ok"
        )
    else:
        assert r.predicted_ms == pytest.approx(r.min_latency_ms)
        assert "no choice has error within" in r.message


def test_infeasible_budget_reports_the_fastest_choice() -> None:
    groups = [
        GroupOptions("a", [Level(8, 2.0, 0.0), Level(4, 1.2, 0.5), Level(2, 1.0, 3.0)]),
        GroupOptions("b", [Level(8, 3.0, 0.0), Level(4, 1.5, 1.0)]),
    ]
    r = choose_levels(groups, budget_ms=2.0, base_ms=1.0)
    assert r.status == "over-budget" and not r.feasible
    assert r.levels == {"a": 2, "b": 4}
    assert r.predicted_ms == pytest.approx(3.5) == r.min_latency_ms == r.reachable_ms
    assert "unreachable" in r.message and "3.5 ms" in r.message


def test_budget_below_base_is_infeasible() -> None:
    r = choose_levels([GroupOptions("a", [Level(1, 0.0, 0.0)])], budget_ms=0.5, base_ms=1.0)
    assert r.status == "over-budget" and r.min_latency_ms == 1.0


def test_generous_budget_keeps_everything_dense() -> None:
    groups = [GroupOptions(g, [Level("dense", 1.0, 0.0), Level("half", 0.6, 0.4)]) for g in "abc"]
    r = choose_levels(groups, budget_ms=100.0, base_ms=1.0)
    assert (
        r.feasible and r.levels == {"a": "dense", "b": "dense", "c": "dense"} and r.grid_ms == 0.0
    )


def test_budget_exactly_at_a_sum_is_met() -> None:
    # 0.1 + 0.2 style float noise must not push an exactly-fitting choice out
    groups = [
        GroupOptions("a", [Level(1, 0.1, 1.0), Level(2, 0.3, 0.0)]),
        GroupOptions("b", [Level(1, 0.2, 5.0), Level(2, 0.6, 0.0)]),
    ]
    r = choose_levels(groups, budget_ms=0.1 + 0.6, base_ms=0.0, resolution=10)
    assert r.feasible and r.levels == {"a": 1, "b": 2} and r.error == 1.0


def test_ties_prefer_lower_latency_then_lower_index() -> None:
    g = GroupOptions(
        "a", [Level("slow", 2.0, 1.0), Level("fast", 1.0, 1.0), Level("fast2", 1.0, 1.0)]
    )
    r = choose_levels([g], budget_ms=5.0, base_ms=0.0)
    assert r.levels == {"a": "fast"}
    r = choose_levels([g], budget_ms=1.5, base_ms=0.0, resolution=3)
    assert r.levels == {"a": "fast"}


def test_slower_level_with_less_error_is_used_when_it_fits() -> None:
    # measured tables can be non-monotone: a wider level may be faster (kernel choice)
    g = GroupOptions("a", [Level(64, 1.0, 0.0), Level(56, 1.3, 0.2), Level(48, 0.7, 0.5)])
    assert choose_levels([g], 1.0, 0.0).levels == {"a": 64}
    assert choose_levels([g], 0.8, 0.0).levels == {"a": 48}


def test_negative_latency_contributions_are_accepted() -> None:
    # contributions relative to something else may be negative; only differences matter
    g = GroupOptions("a", [Level(2, -0.5, 0.0), Level(1, -1.0, 1.0)])
    r = choose_levels([g], budget_ms=1.6, base_ms=2.5)
    assert r.feasible and r.levels == {"a": 1} and r.predicted_ms == pytest.approx(1.5)


def test_large_instance_runs_quickly() -> None:
    import random
    import time

    rnd = random.Random(0)
    groups = [
        GroupOptions(
            i,
            [
                Level(k, 0.05 * k + rnd.random() * 0.01, (16 - k) ** 2 * rnd.random())
                for k in range(1, 17)
            ],
        )
        for i in range(200)
    ]
    dense = sum(g.levels[-1].latency_ms for g in groups)
    t0 = time.perf_counter()
    r = choose_levels(groups, budget_ms=1.0 + 0.6 * dense, base_ms=1.0, resolution=2000)
    assert time.perf_counter() - t0 < 10.0
    assert r.feasible and r.predicted_ms <= 1.0 + 0.6 * dense + TOL


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="twice"):
        choose_levels(
            [GroupOptions("a", [Level(1, 1, 0)]), GroupOptions("a", [Level(1, 1, 0)])], 5, 0
        )
    with pytest.raises(ValueError, match="no levels"):
        choose_levels([GroupOptions("a", [])], 5, 0)
    with pytest.raises(ValueError, match="non-finite"):
        choose_levels([GroupOptions("a", [Level(1, math.nan, 0)])], 5, 0)
    with pytest.raises(ValueError, match="resolution"):
        choose_levels([GroupOptions("a", [Level(1, 1, 0)])], 5, 0, resolution=0)


def test_no_groups() -> None:
    assert choose_levels([], budget_ms=2.0, base_ms=1.0).feasible
    assert choose_levels([], budget_ms=0.5, base_ms=1.0).status == "over-budget"


def test_correct_budget_shrinks_by_the_measured_gap() -> None:
    # predicted 10, measured 12 against a target of 10: next internal budget 10 * 10 / 12
    assert correct_budget(10.0, 10.0, 12.0, 10.0) == pytest.approx(10.0 * 10.0 / 12.0)
    # never grows while over the target
    assert correct_budget(10.0, 9.0, 10.5, 8.0) == pytest.approx(8.0)
    # under the target it may relax, to win accuracy back
    assert correct_budget(10.0, 10.0, 8.0, 10.0) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="measured_ms"):
        correct_budget(10.0, 10.0, 0.0, 10.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 100), st.floats(1, 100), st.floats(1, 100), st.floats(1, 100))
def test_correct_budget_fixed_point(
    target: float, predicted: float, measured: float, current: float
) -> None:
    new = correct_budget(target, predicted, measured, current)
    assert new > 0
    if measured > target:
        assert new < current or new <= predicted * target / measured + 1e-9
        assert new <= current
    # if the measured/predicted ratio holds, a choice predicted at `new` measures at most the target
    assert new * measured / predicted <= target * (1 + 1e-9) or measured > target and new == current

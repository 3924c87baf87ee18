"""Choosing one compression level per group under a latency budget (SPDY / ZipLM search).

The problem. Each prunable group g offers levels l = 0..L_g-1, each with a latency contribution
t[g, l] (milliseconds, from a latency table or an analytic model) and an error e[g, l] (from the
pruning criterion: cumulative OBS error, normalized per group). Choose exactly one level per group
to

    minimize   sum_g e[g, l_g]
    subject to base_ms + sum_g t[g, l_g] <= budget_ms

where base_ms is the latency of everything pruning does not touch. This is a multiple-choice
knapsack problem; SPDY (Frantar & Alistarh, 2022) and ZipLM solve it by dynamic programming over a
discretized latency axis, which we do here.

Discretization (what "exact up to the grid" means):

1. Each group's smallest latency m_g = min_l t[g, l] moves into the base:
   base' = base_ms + sum_g m_g, and the DP sees only the non-negative excess
   t'[g, l] = t[g, l] - m_g. The budget's slack S = budget_ms - base' is what the excess latencies
   must fit in (S < 0: nothing fits).
2. The slack is cut into `resolution` cells of width delta = S / resolution, and every excess
   latency is rounded UP to whole cells: u[g, l] = ceil(t'[g, l] / delta). Since u * delta >= t',
   any choice with sum u <= resolution really meets the budget: the DP never under-estimates
   latency.
3. The DP is exact for the rounded problem. Against the true additive problem it may miss a
   better choice only if that choice's latency is within (number of groups) * delta of the
   budget; the loss shrinks with a finer `resolution` (cost O(groups * levels * resolution) time,
   O(groups * resolution) memory for back-pointers). To recover most such boundary choices the DP
   also fills the G cells past the budget, and a choice found there is accepted when its
   unrounded latency fits (checked exactly, in order of error): a choice that fits exactly on the
   budget is then not lost to rounding.
4. The latency reported for the chosen levels is always recomputed from the unrounded values.

Ties in error are broken towards the lower (rounded) latency, then towards the lower level index.

The additive model ignores fusion and launch effects, so the chosen model must be measured whole and
the search repeated with a corrected internal budget: see `correct_budget`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

#: Relative tolerance when rounding to cells and comparing with the budget (float noise only).
_EPS = 1e-9

Status = Literal["ok", "over-budget", "error-bound"]


@dataclasses.dataclass(frozen=True)
class Level:
    """One option of a group.

    Attributes:
        level_id: How the caller names it, e.g. the number of kept units.
        latency_ms: The group's latency contribution at this level (>= 0 is typical; any finite
            value is accepted, only differences between a group's levels matter to the search).
        error: The error this level adds (finite; lower is better).
    """

    level_id: Hashable
    latency_ms: float
    error: float


@dataclasses.dataclass(frozen=True)
class GroupOptions:
    """The levels one group may take; exactly one is chosen."""

    group_id: Hashable
    levels: Sequence[Level]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What the search chose and why.

    Attributes:
        status: "ok" (budget met, error within bound), "over-budget" (no choice meets the budget),
            or "error-bound" (the budget can be met, but only with more error than `max_error`).
        feasible: status == "ok".
        levels: group id -> chosen level id. For "ok": the minimum-error choice within the budget.
            Otherwise: the fastest choice found (within `max_error` when it was given and can be
        met). predicted_ms: base_ms + sum of the chosen levels' latencies (unrounded).
        error: Sum of the chosen levels' errors.
        min_latency_ms: The lowest latency reachable at all (every group at its fastest level).
        reachable_ms: When not feasible, the lowest latency found that respects `max_error` (equal
            to `min_latency_ms` without a bound); None when feasible.
        budget_ms: The budget searched for.
        base_ms: The non-prunable latency given.
        grid_ms: Width of one latency cell of the DP (0 when no discretization was needed).
        message: One line for the report.
    """

    status: Status
    levels: dict[Hashable, Hashable]
    predicted_ms: float
    error: float
    min_latency_ms: float
    reachable_ms: float | None
    budget_ms: float
    base_ms: float
    grid_ms: float
    message: str

    @property
    def feasible(self) -> bool:
        return self.status == "ok"


def _check(
    groups: Sequence[GroupOptions], budget_ms: float, base_ms: float, resolution: int
) -> None:
    if not math.isfinite(budget_ms) or not math.isfinite(base_ms):
        raise ValueError(f"budget_ms and base_ms must be finite, got {budget_ms}, {base_ms}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    seen: set[Hashable] = set()
    for g in groups:
        if g.group_id in seen:
            raise ValueError(f"group {g.group_id!r} appears twice")
        seen.add(g.group_id)
        if not g.levels:
            raise ValueError(f"group {g.group_id!r} has no levels")
        for lv in g.levels:
            if not (math.isfinite(lv.latency_ms) and math.isfinite(lv.error)):
                raise ValueError(
                    f"group {g.group_id!r} level {lv.level_id!r} has a non-finite value"
                )


def _fastest(groups: Sequence[GroupOptions]) -> list[int]:
    """Per group, the index of the fastest level (ties: lower error, then lower index)."""
    return [_argmin(g, lambda lv, i: (lv.latency_ms, lv.error, i)) for g in groups]


def _argmin(g: GroupOptions, key: Callable[[Level, int], tuple[float, float, int]]) -> int:
    return min(range(len(g.levels)), key=lambda i: key(g.levels[i], i))


def _totals(
    groups: Sequence[GroupOptions], idx: Sequence[int], base_ms: float
) -> tuple[float, float]:
    lat = base_ms + math.fsum(g.levels[i].latency_ms for g, i in zip(groups, idx, strict=True))
    err = math.fsum(g.levels[i].error for g, i in zip(groups, idx, strict=True))
    return lat, err


def _dp_table(
    groups: Sequence[GroupOptions], cells: int, delta: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
    """dp[t] = min error over choices whose rounded excess latency is exactly t cells (t <= cells).

    Returns the final dp row and back-pointers back[g, t] (level index of group g on the best path
    that reaches t cells after g). Unreachable cells hold +inf.
    """
    n = cells + 1
    dp = np.full(n, np.inf)
    dp[0] = 0.0
    back = np.zeros((len(groups), n), dtype=np.int32)
    for gi, g in enumerate(groups):
        m = min(lv.latency_ms for lv in g.levels)
        new = np.full(n, np.inf)
        arg = np.zeros(n, dtype=np.int32)
        for li, lv in enumerate(g.levels):
            u = _cells(lv.latency_ms - m, delta)
            if u > cells:
                continue
            cand = np.full(n, np.inf)
            cand[u:] = dp[: n - u] + lv.error
            better = cand < new  # strict: the lower level index wins ties
            new[better] = cand[better]
            arg[better] = li
        dp = new
        back[gi] = arg
    return dp, back


def _cells(excess: float, delta: float) -> int:
    """Cells covering `excess` ms, rounded up (float noise just above an integer is forgiven)."""
    if excess <= 0.0:
        return 0
    if delta <= 0.0:
        return 1 << 62
    q = excess / delta
    if not q < 2.0**62:  # also inf, from a subnormal grid
        return 1 << 62
    k = math.floor(q)
    return k if q - k <= _EPS * max(1.0, q) else k + 1


def _backtrack(
    groups: Sequence[GroupOptions], back: npt.NDArray[np.int32], t: int, delta: float
) -> list[int]:
    idx = [0] * len(groups)
    for gi in range(len(groups) - 1, -1, -1):
        li = int(back[gi, t])
        idx[gi] = li
        m = min(lv.latency_ms for lv in groups[gi].levels)
        t -= _cells(groups[gi].levels[li].latency_ms - m, delta)
    assert t == 0, "DP back-pointers are inconsistent"
    return idx


def _min_error_within(
    groups: Sequence[GroupOptions], slack_ms: float, resolution: int
) -> tuple[list[int] | None, float]:
    """Minimum-error choice whose (rounded-up) excess latency fits `slack_ms`; None if none fits."""
    if slack_ms < 0.0:
        return None, 0.0
    excess_max = math.fsum(
        max(lv.latency_ms for lv in g.levels) - min(lv.latency_ms for lv in g.levels)
        for g in groups
    )
    if excess_max <= slack_ms * (1.0 + _EPS):
        # Everything fits: no grid needed, the exact optimum is each group's minimum-error level.
        idx = [_argmin(g, lambda lv, i: (lv.error, lv.latency_ms, i)) for g in groups]
        return idx, 0.0
    if slack_ms == 0.0:
        # Only zero-excess levels fit.
        delta = 0.0
        cells = 0
    else:
        delta = slack_ms / resolution
        cells = resolution
    # The table runs G cells past the budget: upper rounding adds less than one cell per group, so a
    # choice that truly fits can land there. Those cells are accepted only after an exact check.
    dp, back = _dp_table(groups, cells + len(groups) if delta > 0 else cells, delta)
    order = np.lexsort((np.arange(dp.size), dp))  # by error, then by latency
    for t in order:
        if not np.isfinite(dp[t]):
            break
        idx = _backtrack(groups, back, int(t), delta)
        if t <= cells or _excess(groups, idx) <= slack_ms * (1.0 + _EPS):
            return idx, delta
    return None, delta


def _excess(groups: Sequence[GroupOptions], idx: Sequence[int]) -> float:
    return math.fsum(
        g.levels[i].latency_ms - min(lv.latency_ms for lv in g.levels)
        for g, i in zip(groups, idx, strict=True)
    )


def _min_latency_within_error(
    groups: Sequence[GroupOptions], max_error: float, resolution: int
) -> list[int] | None:
    """Fastest choice (up to a grid over the whole latency range) with total error <= max_error."""
    excess_max = math.fsum(
        max(lv.latency_ms for lv in g.levels) - min(lv.latency_ms for lv in g.levels)
        for g in groups
    )
    if excess_max == 0.0:
        delta, cells = 0.0, 0
    else:
        delta, cells = (
            excess_max / resolution,
            resolution + len(groups),
        )  # rounding adds < 1 cell per group
    dp, back = _dp_table(groups, cells, delta)
    ok = np.nonzero(dp <= max_error + _EPS * max(1.0, abs(max_error)))[0]
    if ok.size == 0:
        return None
    return _backtrack(groups, back, int(ok[0]), delta)


def choose_levels(
    groups: Sequence[GroupOptions],
    budget_ms: float,
    base_ms: float,
    *,
    resolution: int = 2000,
    max_error: float | None = None,
) -> SearchResult:
    """Choose one level per group minimizing total error subject to the latency budget.

    Args:
        groups: The groups and their levels (at least one level each; ids unique).
        budget_ms: The latency budget for the whole model (internal budget, see `correct_budget`).
        base_ms: Latency of what no group covers.
        resolution: Cells of the latency grid (see the module docstring); cost is linear in it.
        max_error: Optional bound on the total error; a solution above it is reported as
            "error-bound" together with the fastest choice that respects the bound.

    Returns:
        A SearchResult; `feasible` says whether both the budget and the error bound are met.
    """
    _check(groups, budget_ms, base_ms, resolution)
    fastest = _fastest(groups)
    min_ms, fastest_err = _totals(groups, fastest, base_ms)
    base_prime = base_ms + math.fsum(min(lv.latency_ms for lv in g.levels) for g in groups)
    slack = budget_ms - base_prime
    if slack < 0.0 and slack >= -_EPS * max(1.0, abs(budget_ms)):
        slack = 0.0
    idx, delta = _min_error_within(groups, slack, resolution)

    def ids(choice: Sequence[int]) -> dict[Hashable, Hashable]:
        return {g.group_id: g.levels[i].level_id for g, i in zip(groups, choice, strict=True)}

    if idx is not None:
        lat, err = _totals(groups, idx, base_ms)
        if max_error is None or err <= max_error + _EPS * max(1.0, abs(max_error)):
            return SearchResult(
                "ok",
                ids(idx),
                lat,
                err,
                min_ms,
                None,
                budget_ms,
                base_ms,
                delta,
                f"budget {budget_ms:.4g} ms met: predicted {lat:.4g} ms, error {err:.4g}",
            )
    # Not feasible: the fastest choice, within the error bound if one was given and can be met.
    best, bounded = fastest, None
    if max_error is not None:
        bounded = _min_latency_within_error(groups, max_error, resolution)
        if bounded is not None:
            best = bounded
    lat, err = _totals(groups, best, base_ms)
    if bounded is not None and lat <= budget_ms * (1.0 + _EPS):
        # The budget grid rounded this choice out; it meets both the budget and the bound.
        return SearchResult(
            "ok",
            ids(best),
            lat,
            err,
            min_ms,
            None,
            budget_ms,
            base_ms,
            delta,
            f"budget {budget_ms:.4g} ms met: predicted {lat:.4g} ms, error {err:.4g}",
        )
    no_bounded = max_error is not None and bounded is None
    tail = f" (no choice has error within {max_error:.4g})" if no_bounded else ""
    if idx is None:
        status: Status = "over-budget"
        msg = f"budget {budget_ms:.4g} ms unreachable: the fastest choice is {min_ms:.4g} ms"
        if bounded is not None:
            msg += f"; within error {max_error:.4g} the fastest is {lat:.4g} ms"
        msg += tail
    else:
        status = "error-bound"
        if bounded is not None:
            msg = (
                f"budget {budget_ms:.4g} ms needs error above the bound {max_error:.4g}; "
                f"within the bound the fastest is {lat:.4g} ms (error {err:.4g})"
            )
        else:
            msg = f"budget {budget_ms:.4g} ms can be met, but not within the error bound" + tail
    return SearchResult(status, ids(best), lat, err, min_ms, lat, budget_ms, base_ms, delta, msg)


def correct_budget(
    target_ms: float, predicted_ms: float, measured_ms: float, current_budget: float
) -> float:
    """The internal budget for the next search, after measuring the chosen model whole.

    The additive table model misses fusion and launch effects. Assuming the ratio measured/predicted
    stays about the same for nearby choices, a choice predicted at B' will measure B' * measured /
    predicted, so the next internal budget is B' = target * predicted / measured.

    When the measurement is over the target the budget never grows (min with `current_budget`), so
    repeated corrections make progress. When it is under the target the budget may grow, trading
    back latency for error; the caller stops iterating when it is content (e.g. measured within the
    target and a tolerance, or after a fixed number of rounds), keeping the best measured choice.
    """
    for name, v in (
        ("target_ms", target_ms),
        ("predicted_ms", predicted_ms),
        ("measured_ms", measured_ms),
        ("current_budget", current_budget),
    ):
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"{name} must be a positive finite number, got {v}")
    new = target_ms * predicted_ms / measured_ms
    if measured_ms > target_ms:
        new = min(new, current_budget)
    return new



"""The search corrected by measured end-to-end output error (search.loop + search.output_error)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import pytest

from spa_compiler.search.knapsack import GroupOptions, Level
from spa_compiler.search.loop import LoopSettings, meet_budget, plan_of
from spa_compiler.search.output_error import ErrorModel


def _instance() -> tuple[list[GroupOptions], dict[str, str], dict[str, Hashable]]:
    """Two 'head' sites and two 'neuron' sites; each has levels 0 (dense, 10 ms), 1 (6 ms), 2 (3 ms).

    Per-site (additive) errors say heads are cheap (0.01, 0.03) and neurons dear (0.05, 0.15).
    """
    opts = []
    classes = {}
    for s in ("h1", "h2", "n1", "n2"):
        head = s.startswith("h")
        e1, e2 = (0.01, 0.03) if head else (0.05, 0.15)
        opts.append(GroupOptions(s, [Level(0, 10.0, 0.0), Level(1, 6.0, e1), Level(2, 3.0, e2)]))
        classes[s] = "head" if head else "neuron"
    return opts, classes, {s: 0 for s in classes}


def _true_error(plan: Mapping[str, Hashable]) -> float:
    """The 'measured' output error: heads cost 20x their per-site estimate, neurons 1x, and the
    whole compounds (1 + sum)^2 - 1."""
    per = {1: (0.01, 0.05), 2: (0.03, 0.15)}
    tot = 0.0
    for s, k in plan.items():
        if k:
            h, n = per[int(k)]  # type: ignore[index]
            tot += 20 * h if s.startswith("h") else n
    return (1 + tot) ** 2 - 1


def _exact_latency(plan: Mapping[str, Hashable], predicted: float) -> float:
    del predicted
    return sum({0: 10.0, 1: 6.0, 2: 3.0}[int(k)] for k in plan.values())  # type: ignore[index]


def _run(measure_error, **kw):  # type: ignore[no-untyped-def]
    opts, classes, dense = _instance()
    return meet_budget(opts, plan_of, base_ms=0.0, budget_ms=28.0, dense_now_ms=40.0, table_dense_ms=40.0,
                       measure=_exact_latency, max_total_error=10.0,
                       settings=LoopSettings(max_iters=6, safety=0.0, tolerance=0.2),
                       measure_error=measure_error, site_class=classes if measure_error else None,
                       dense_plan=dense if measure_error else None, **kw)


def test_without_error_measurement_the_additive_model_prunes_heads() -> None:
    out = _run(None)
    assert out.reached
    assert out.output_error is None and out.error_model is None
    assert out.plan["h1"] == out.plan["h2"] == 2  # the per-site errors make heads look free
    assert all("measured_output_error" not in r for r in out.rounds)


def test_measured_error_reweights_the_classes_and_picks_a_better_plan() -> None:
    calls: list[dict[str, Hashable]] = []

    def measure(plan: Mapping[str, Hashable]) -> float:
        calls.append(dict(plan))
        return _true_error(plan)

    base = _run(None)
    out = _run(measure)
    assert out.reached
    assert out.output_error is not None
    assert out.output_error < _true_error(base.plan)  # the measured error decided
    assert out.output_error == pytest.approx(_true_error(out.plan))
    r1 = out.rounds[0]
    assert set(r1["measured_output_error_by_class"]) == {"head", "neuron"}
    w = r1["class_weights"]
    assert w["head"] / w["neuron"] > 10.0  # 20x per site, compounding adds to it
    assert math.exp(sum(math.log(v) for v in w.values()) / 2) == pytest.approx(1.0)
    for r in out.rounds:  # predicted and measured output error in every round
        assert "predicted_output_error" in r and "measured_output_error" in r
    assert len(out.rounds) >= 2  # a re-weighted search follows the first round
    # plans restricted to one class were measured (other sites dense)
    assert any(all(k == 0 for s, k in c.items() if s.startswith("n")) and any(c[s] for s in ("h1", "h2"))
               for c in calls)


def test_output_error_bound_makes_the_budget_unreachable() -> None:
    out = _run(_true_error, max_output_error=1e-4)
    assert not out.reached
    assert out.unreachable is not None
    assert "additive_bound" in out.rounds[0]


def test_output_error_bound_that_holds_is_met() -> None:
    out = _run(_true_error, max_output_error=10.0)
    assert out.reached and out.output_error is not None and out.output_error <= 10.0


def test_error_model_fit_and_bound() -> None:
    m = ErrorModel({"a": "x", "b": "y"})
    plan = {"a": 1, "b": 1}
    errs = {"a": 0.1, "b": 0.1}
    per = m.fit_classes(plan, errs, {"a": 0, "b": 0},
                        lambda p: 0.4 * (p["a"] == 1) + 0.1 * (p["b"] == 1))
    assert per == {"x": pytest.approx(0.4), "y": pytest.approx(0.1)}
    assert m.weights["x"] / m.weights["y"] == pytest.approx(4.0)
    m.observe(errs, 0.5)
    assert m.predict(errs) == pytest.approx(0.5)
    assert m.additive_bound(0.5) == pytest.approx(m.weighted(errs))
    one = ErrorModel({"a": "x"})
    assert one.fit_classes({"a": 1}, {"a": 0.1}, {"a": 0}, lambda p: 1.0) == {}  # one class: nothing to fit


def test_site_fits_find_the_one_site_whose_estimate_is_wrong() -> None:
    """n2 looks the cheapest site but costs 10x its per-site estimate at the output, the others what
    they say: class weights cannot tell n1 from n2, per-site weights can, and the plan spares n2."""
    opts = []
    classes = {}
    est = {s: (0.04, 0.12) if s == "n2" else (0.05, 0.15) for s in ("h1", "h2", "n1", "n2")}
    for s, (e1, e2) in est.items():
        opts.append(GroupOptions(s, [Level(0, 10.0, 0.0), Level(1, 6.0, e1), Level(2, 3.0, e2)]))
        classes[s] = "head" if s.startswith("h") else "neuron"
    dense = {s: 0 for s in classes}

    def true(plan: Mapping[str, Hashable]) -> float:
        return sum((0.0, *est[s])[int(k)] * (10.0 if s == "n2" else 1.0)  # type: ignore[call-overload]
                   for s, k in plan.items())

    def run(sites: int):  # type: ignore[no-untyped-def]
        return meet_budget([GroupOptions(o.group_id, list(o.levels)) for o in opts], plan_of, base_ms=0.0,
                           budget_ms=28.0, dense_now_ms=40.0, table_dense_ms=40.0, measure=_exact_latency,
                           max_total_error=10.0, settings=LoopSettings(max_iters=6, safety=0.0, tolerance=0.2),
                           measure_error=true, site_class=classes, dense_plan=dense, max_site_fits=sites)

    without, with_sites = run(0), run(8)
    assert with_sites.reached and without.reached
    r1 = with_sites.rounds[0]
    assert set(r1["measured_output_error_by_site"]) == set(classes)
    w = r1["site_weights"]
    assert w["n2"] / w["n1"] == pytest.approx(10.0, rel=1e-6)
    assert with_sites.plan["n2"] == 0 and with_sites.output_error < without.output_error
    assert "measured_output_error_by_site" not in without.rounds[0]

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


def _one_kind() -> tuple[list[GroupOptions], dict[str, str], dict[str, Hashable]]:
    """Four 'neuron' sites, levels 0 (dense, 10 ms), 1 (6 ms), 2 (3 ms). The per-site errors call
    n1 and n2 nearly free even at their deepest level (0.001, 0.002); n3 and n4 cost 0.05, 0.15."""
    opts, classes = [], {}
    for s in ("n1", "n2", "n3", "n4"):
        e1, e2 = (0.001, 0.002) if s in ("n1", "n2") else (0.05, 0.15)
        opts.append(GroupOptions(s, [Level(0, 10.0, 0.0), Level(1, 6.0, e1), Level(2, 3.0, e2)]))
        classes[s] = "neuron"
    return opts, classes, {s: 0 for s in classes}


def _deep_cuts_compound(plan: Mapping[str, Hashable]) -> float:
    """Measured: a site's deepest level costs 0.5 whatever its per-site estimate, level 1 0.02-0.05."""
    per = {"n1": (0.02, 0.5), "n2": (0.02, 0.5), "n3": (0.05, 0.5), "n4": (0.05, 0.5)}
    return sum(per[s][int(k) - 1] for s, k in plan.items() if k)  # type: ignore[call-overload]


def _uniform(share: float) -> dict[str, Hashable]:
    level = 0 if share < 0.25 else 1 if share < 0.5 else 2
    return {s: level for s in ("n1", "n2", "n3", "n4")}


def _predict(plan: Mapping[str, Hashable]) -> float:
    return _exact_latency(plan, 0.0)


def _plan_error(plan: Mapping[str, Hashable]) -> float:
    opts = {o.group_id: {lv.level_id: lv.error for lv in o.levels} for o in _one_kind()[0]}
    return sum(opts[s][int(k)] for s, k in plan.items())  # type: ignore[call-overload]


def _run_one_kind(uniform: bool, budget: float = 28.0):  # type: ignore[no-untyped-def]
    opts, classes, dense = _one_kind()
    return meet_budget(opts, plan_of, base_ms=0.0, budget_ms=budget, dense_now_ms=40.0, table_dense_ms=40.0,
                       measure=_exact_latency, max_total_error=10.0,
                       settings=LoopSettings(max_iters=4, safety=0.0, tolerance=0.2),
                       measure_error=_deep_cuts_compound, site_class=classes, dense_plan=dense,
                       plan_error=_plan_error, predict=_predict,
                       uniform_plans={"every neuron group": _uniform} if uniform else None)


def test_a_uniform_family_competes_and_wins_when_the_site_sum_misallocates() -> None:
    """One kind only (no class weights to learn): the per-site sum takes n1 and n2 to their deepest
    level, which measures 1.0; one share of every site (level 1 everywhere, 24 ms) measures 0.14."""
    alone = _run_one_kind(uniform=False)
    assert alone.reached and alone.plan["n1"] == alone.plan["n2"] == 2
    assert alone.output_error == pytest.approx(1.0)
    out = _run_one_kind(uniform=True)
    assert out.reached
    assert dict(out.plan) == {"n1": 1, "n2": 1, "n3": 1, "n4": 1}
    assert out.output_error == pytest.approx(0.14)
    cands = [r for r in out.rounds if r["status"] == "uniform-candidate"]
    assert cands and cands[0]["family"] == "every neuron group"
    assert cands[0]["measured_ms"] == pytest.approx(24.0)
    assert cands[0]["measured_output_error"] == pytest.approx(0.14)


def test_a_uniform_family_that_cannot_reach_the_budget_is_not_measured() -> None:
    """Budget 11 ms: the deepest share (every site at 3 ms, 12 ms) is predicted over it: the family
    is skipped, with the reason, and no plan of it is measured."""
    out = _run_one_kind(uniform=True, budget=11.0)
    cands = [r for r in out.rounds if r["status"] == "uniform-candidate"]
    assert len(cands) == 1 and "over the budget" in cands[0]["skipped"]
    assert "measured_ms" not in cands[0]


def test_reweighting_that_measures_worse_is_dropped() -> None:
    """Per-class weights fitted on round 1 that lead to a worse measured plan in round 2 are
    dropped: the rounds go on with the plain additive sum and the plan kept measures no worse
    than round 1's within the budget. Budget 22 ms: round 1 cuts both heads deep and one neuron
    site (measured 0.7); the heads alone measure dear (2.0), so the re-weighted round 2 spares
    heads and cuts the neurons deep (measured 2.1)."""
    opts, classes, dense = _instance()

    def misleading(plan: Mapping[str, Hashable]) -> float:
        # a plan restricted to the heads measures dear (the class fit then avoids heads), but a full
        # plan that spares the heads measures worse than one that cuts them
        cut_heads = sum(1 for s, k in plan.items() if k and s.startswith("h"))
        cut_neurons = sum(int(k) for s, k in plan.items() if k and s.startswith("n"))  # type: ignore[call-overload]
        if cut_neurons == 0:
            return 1.0 * cut_heads
        return 0.1 * cut_heads + 0.5 * cut_neurons

    out = meet_budget(opts, plan_of, base_ms=0.0, budget_ms=22.0, dense_now_ms=40.0, table_dense_ms=40.0,
                      measure=_exact_latency, max_total_error=10.0,
                      settings=LoopSettings(max_iters=6, safety=0.0, tolerance=0.2),
                      measure_error=misleading, site_class=classes, dense_plan=dense)
    r1, r2 = out.rounds[0], out.rounds[1]
    assert r1["class_weights"]["head"] > r1["class_weights"]["neuron"]
    assert r2["measured_output_error"] > r1["measured_output_error"]
    assert r2["reweighting"].startswith("reverted")
    assert out.error_model is not None and out.error_model.weights == {}
    assert out.reached and out.output_error == pytest.approx(r1["measured_output_error"])


def test_variants_are_tried_for_the_best_family_only() -> None:
    """Two families: "plain" (every site at level 1, measured 0.14) and "front" (n1, n2 at level 2,
    the rest dense: 1.0). Only the variants of "plain" are built and measured."""
    made: list[str] = []

    def tagged(name: str, make):  # type: ignore[no-untyped-def]
        def f(share: float) -> dict[str, Hashable]:
            made.append(name)
            return make(share)
        return f

    def front_loaded(share: float) -> dict[str, Hashable]:  # n1, n2 cut, n3, n4 dense
        base = _uniform(share)
        return {**base, "n3": 0, "n4": 0} if share >= 0.25 else base

    def level_one(share: float) -> dict[str, Hashable]:  # n1, n2 at level 1; n3, n4 too from share 0.5
        return {"n1": 1, "n2": 1, "n3": 1 if share >= 0.5 else 0, "n4": 1 if share >= 0.5 else 0}

    opts, classes, dense = _one_kind()
    out = meet_budget(opts, plan_of, base_ms=0.0, budget_ms=28.0, dense_now_ms=40.0, table_dense_ms=40.0,
                      measure=_exact_latency, max_total_error=10.0,
                      settings=LoopSettings(max_iters=4, safety=0.0, tolerance=0.2),
                      measure_error=_deep_cuts_compound, site_class=classes, dense_plan=dense,
                      plan_error=_plan_error, predict=_predict,
                      uniform_plans={"plain": _uniform, "front": tagged("front", front_loaded)},
                      uniform_variants={"plain": {"plain, graded": tagged("plain-variant", level_one)},
                                        "front": {"front, graded": tagged("front-variant", _uniform)}})
    fams = [r["family"] for r in out.rounds if r["status"] == "uniform-candidate" and "measured_ms" in r]
    assert fams[:2] == ["plain", "front"] and "plain, graded" in fams and "front, graded" not in fams
    assert "front-variant" not in made
    assert out.output_error == pytest.approx(0.14)


def test_a_uniform_family_bracketing_the_budget_is_measured_once_more_in_between() -> None:
    """The table is linear; the real latency bends (faster than predicted past a share, slower
    before it). The table's share measures over the budget, the family's own ratio overshoots
    under it by more than the tolerance; the share interpolated between those two measurements is
    measured too, meets the budget nearer to it and with less output error, and is what the family
    returns."""
    from spa_compiler.search.loop import _uniform_candidate

    budget = 60.0

    def predict(plan: Mapping[str, Hashable]) -> float:
        return 100.0 * (1.0 - float(plan["n"]))  # type: ignore[arg-type]

    def measure(plan: Mapping[str, Hashable], predicted: float) -> float:
        share = float(plan["n"])  # type: ignore[arg-type]
        return 100.0 * (1.0 - share) + (8.0 if share < 0.42 else -8.0)

    rounds: list[dict] = []
    seen: list[tuple[float, float | None]] = []
    best = _uniform_candidate(
        "every neuron group", lambda s: {"n": round(s, 4)}, 1.0, budget, budget, 10.0, 1,
        plan_error=lambda p: float(p["n"]) ** 2, predict=predict, measure=measure,  # type: ignore[arg-type]
        measure_error=lambda p: float(p["n"]), model=None, rounds=rounds,  # type: ignore[arg-type]
        settings=LoopSettings(safety=0.0, tolerance=0.05),
        consider=lambda m, e, p, o: seen.append((m, o)))
    got = [(r["uniform_share"], r["measured_ms"]) for r in rounds]
    assert len(got) == 3 and [r.get("interpolated", False) for r in rounds] == [False, False, True]
    (s0, m0), (s1, m1), (s2, m2) = got
    assert m0 > budget and m1 < budget * 0.95  # over, then more than the tolerance under
    assert s0 < s2 < s1 and m1 < m2 <= budget  # in between, nearer the budget, within it
    assert best == pytest.approx(s2, abs=1e-4) and best < s1  # less error than the overshoot
    assert len(seen) == 3


def test_a_uniform_family_is_not_interpolated_without_a_bracket() -> None:
    """Both measured shares over the budget (the curve is slower than predicted everywhere): no
    third share is guessed; the family returns no result within the budget."""
    from spa_compiler.search.loop import _uniform_candidate

    rounds: list[dict] = []
    best = _uniform_candidate(
        "every neuron group", lambda s: {"n": round(s, 4)}, 1.0, 60.0, 60.0, 10.0, 1,
        plan_error=lambda p: float(p["n"]), predict=lambda p: 100.0 * (1.0 - float(p["n"])),  # type: ignore[arg-type]
        measure=lambda p, pred: 100.0 * (1.0 - float(p["n"])) + 30.0,  # type: ignore[arg-type]
        measure_error=lambda p: float(p["n"]), model=None, rounds=rounds,  # type: ignore[arg-type]
        settings=LoopSettings(safety=0.0, tolerance=0.05), consider=lambda *a: None)
    assert best is None
    assert len(rounds) == 2 and not any(r.get("interpolated") for r in rounds)

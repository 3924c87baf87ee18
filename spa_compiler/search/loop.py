"""Meeting a measured latency budget: the measure-and-correct loop over any method's variants.

The knapsack (`search.knapsack.choose_levels`) picks one variant per site from an additive latency
table. The table ignores fusion and launch effects, so every choice is applied to a clone of the
model, timed whole on the target (in alternation with the dense model, so machine-load changes
cancel), and the internal budget is corrected by the measured/predicted gap:

1. round 1 searches at the aimed budget B(1 - safety) (the final paired check has its own noise);
2. while no measurement lands in [B(1 - tolerance), B(1 - safety)]: bracket the internal budget
   between the largest that measured within budget and the smallest that measured over, bisect
   inside the bracket, or else correct by the measured/predicted ratio (`correct_budget`);
3. an infeasible round whose plan still misses ends the rounds (one that meets the budget means a
   correction overshot: the loop goes on);
4. if the best plan still misses, the joint fallback (when the caller gives one) bisects one shared
   share of every site on measurements alone, within the error bound, since pruning every layer
   kind together can gain more than the table's sum (MiniLM on the H200: the table's fastest plan
   measured 0.71x, every group at its deepest level 0.64x);
5. the verdict: the best plan found (within budget with the least error, else the fastest), and
   whether it meets the user's budget.

With `measure_error` (a second callable beside `measure`: plan -> measured end-to-end output error,
e.g. `search.output_error.OutputErrorProbe`), the additive per-site error is corrected like the
latency table is:

- every measured plan also gets its output error measured; the rounds record the additive
  prediction, the corrected prediction and the measurement side by side;
- after round 1, the plan restricted to each site class (`site_class`, e.g. pruning's unit kinds)
  is measured and each class's errors are re-weighted by its measured / predicted ratio
  (`ErrorModel.fit_classes`), so the knapsack stops trading, say, heads for neurons at their
  per-layer price; a scale refitted from every measured plan carries the overall level;
- the re-weighting is itself checked: when round 2's plan (the first on re-weighted errors)
  measures a larger output error than round 1's, the weights are dropped and the rounds go on with
  the plain sum (EfficientNet-Lite0 at 0.6x: per-site weights led to plans of cosine error 0.055
  where the plain sum's plan measured 0.035);
- "the least error" among plans that meet the budget is the least *measured* output error;
- `max_output_error` bounds the measured output error: the knapsack's summed-error bound becomes
  the corrected equivalent (`ErrorModel.additive_bound`), and a budget whose plans all measure
  above it is called unreachable;
- `uniform_plans` (family name -> share -> plan, e.g. one share of every FFN neuron group, the
  heads dense) are competitors, not only a fallback: after the rounds, each family's share that
  the table, corrected by the rounds' measured / predicted ratio, puts at the budget is measured
  (latency and output error; a second try at the family's own ratio when the first misses the
  budget or leaves more than the tolerance unused), and the least measured output error within
  the budget wins. A per-layer error sum can misallocate badly once errors compound: SmolLM2-135M
  at 0.8x of CPU latency, the searched FFN plan measured perplexity 37.6 where one share of every
  FFN layer at the same latency measured 31.5 (benchmarks/quality/README.md).

Everything here is in the latency table's milliseconds: a table may come from another run (other
load, another day) while the user's budget is relative to the dense model measured now, so the
budget is rescaled by table_dense / dense_now before the rounds start.

The loop knows nothing of what a variant does; a `Method` applies plans (`CandidateTimer`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from spa_compiler.ir import ModelIR
from spa_compiler.methods.base import Method, Plan
from spa_compiler.search.knapsack import GroupOptions, Level, SearchResult, choose_levels, correct_budget
from spa_compiler.search.output_error import ErrorFn, ErrorModel

logger = logging.getLogger(__name__)

#: (plan, predicted ms) -> measured ms, in the latency table's milliseconds.
MeasureFn = Callable[[dict[str, Hashable], float], float]

#: The best plan so far: (measured ms, score, plan, measured output error or None, summed error).
Best = tuple[float, float, dict[str, Hashable], "float | None", float]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How hard the loop tries.

    Attributes:
        max_iters: Measure-and-correct rounds (the joint fallback's measurements come on top).
        tolerance: Accept a measurement within this fraction under the budget.
        safety: Aim this fraction under the budget (absorbs the final check's timing noise).
        joint_max_share: The deepest shared share the joint fallback tries.
        joint_rounds: Bisection steps of the joint fallback.
    """

    max_iters: int = 8
    tolerance: float = 0.05
    safety: float = 0.015
    joint_max_share: float = 0.75
    joint_rounds: int = 4


@dataclasses.dataclass
class Outcome:
    """What the loop chose.

    Attributes:
        plan: site -> variant key of the chosen plan.
        measured_ms: Its measured latency (table milliseconds).
        error: Its summed error.
        rounds: One record per measurement (predicted, measured, error, status).
        last: The knapsack result of the last round (None when the plan came from the joint
            fallback and the table had called the budget unreachable).
        reached: Whether the measured latency meets the user's budget.
        unreachable: Why not, when not reached.
        scale: table dense ms / dense ms now (divide table milliseconds by it for the user's).
        output_error: The chosen plan's measured output error (None without `measure_error`).
        error_model: The fitted output-error correction (None without `measure_error`).
    """

    plan: dict[str, Hashable]
    measured_ms: float
    error: float
    rounds: list[dict[str, Any]]
    last: SearchResult | None
    reached: bool
    unreachable: str | None
    scale: float
    output_error: float | None = None
    error_model: ErrorModel | None = None


class CandidateTimer:
    """Times plans of one method on a clone of the model, memoized per plan.

    Each candidate is applied with `exact=False` (weight re-fits skipped: latency does not depend
    on weight values), optionally prepared for the target (`prepare`, e.g. the target's lowering),
    and timed in alternation with the dense model; its ratio to the dense time, times the reference
    dense latency, is the measurement. Without a provider the prediction is returned (analytic).
    """

    def __init__(self, model: ModelIR, method: Method, latency: Any, feeds: Mapping[str, Any],
                 dense_ref_ms: float, *, prepare: Callable[[ModelIR], ModelIR] | None = None,
                 input_shapes: Mapping[str, Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.model = model
        self.method = method
        self.latency = latency
        self.feeds = dict(feeds)
        self.dense_ref_ms = dense_ref_ms
        self.prepare = prepare
        self.progress = progress
        self.seen: dict[tuple[tuple[str, Hashable], ...], float] = {}
        # ratios measured by earlier runs of this model, shapes and provider (latency/cache.py);
        # prepared candidates (target lowering) are keyed apart from plain ones
        self.timings = None
        if latency is not None and input_shapes is not None:
            from spa_compiler.latency.cache import provider_cache

            self.timings = provider_cache(model, input_shapes, latency)

    def __call__(self, plan: Mapping[str, Hashable], predicted: float) -> float:
        key = tuple(sorted((str(k), v) for k, v in plan.items()))
        if key not in self.seen:
            from spa_compiler.latency.cache import entry_key

            entry = entry_key("candidate", [self.method.name, self.prepare is not None, [list(map(repr, kv)) for kv in key]])
            hit = self.timings.get(entry) if self.timings is not None else None
            if self.latency is None:
                self.seen[key] = predicted
            elif hit is not None:
                self.seen[key] = hit[0] * self.dense_ref_ms
            else:
                if self.progress:
                    self.progress("measure candidate", 0, 1)
                clone = self.model.clone()
                self.method.apply(clone, dict(plan), exact=False, validate=False)
                dense = self.model
                if self.prepare is not None:
                    clone, dense = self.prepare(clone), self.prepare(self.model)
                t_dense, t_cand = self.latency.time_many([dense, clone], self.feeds)
                self.seen[key] = t_cand.ms / t_dense.ms * self.dense_ref_ms
                del clone
                if self.timings is not None:
                    self.timings.put(entry, t_cand.ms / t_dense.ms, t_dense.ms)
                    self.timings.flush()
                if self.progress:
                    self.progress("measure candidate", 1, 1)
        return self.seen[key]


def meet_budget(
    options: Sequence[GroupOptions],
    decode: Callable[[SearchResult], dict[str, Hashable]],
    *,
    base_ms: float,
    budget_ms: float,
    dense_now_ms: float,
    table_dense_ms: float,
    measure: MeasureFn,
    max_total_error: float,
    settings: LoopSettings = LoopSettings(),
    has_measurements: bool = True,
    joint_plan: Callable[[float], dict[str, Hashable]] | None = None,
    plan_error: Callable[[Mapping[str, Hashable]], float] | None = None,
    predict: Callable[[Mapping[str, Hashable]], float] | None = None,
    n_sites: int | None = None,
    measure_error: ErrorFn | None = None,
    site_class: Mapping[str, str] | None = None,
    dense_plan: Mapping[str, Hashable] | None = None,
    max_output_error: float | None = None,
    max_site_fits: int = 0,
    uniform_plans: Mapping[str, Callable[[float], dict[str, Hashable]]] | None = None,
    uniform_variants: Mapping[str, Mapping[str, Callable[[float], dict[str, Hashable]]]] | None = None,
) -> Outcome:
    """Run the rounds (see the module docstring).

    Args:
        options: Per site, its variants with table latency and error (`knapsack.GroupOptions`).
        decode: Turns a knapsack result into a plan (site -> variant key).
        base_ms: What no searched site covers, in table milliseconds.
        budget_ms: The user's budget in milliseconds of now.
        dense_now_ms: The dense model's latency measured now.
        table_dense_ms: The table's dense latency.
        measure: (plan, predicted) -> measured table milliseconds (e.g. a `CandidateTimer`).
        max_total_error: The summed-error bound (mean bound times the number of sites).
        settings: Rounds, tolerance, safety, joint fallback.
        has_measurements: False when `measure` only echoes predictions (no joint fallback then).
        joint_plan: share -> a plan pruning every site by about that share (joint fallback).
        plan_error: A plan's summed error (joint fallback).
        predict: A plan's additive prediction (joint fallback's records).
        n_sites: Sites the mean error is taken over (default: len(options)).
        measure_error: plan -> measured output error (see the module docstring).
        site_class: site id -> class, for the per-class error weights (needs `dense_plan`).
        dense_plan: Every site at its dense variant (for measuring a plan one class at a time).
        max_output_error: Bound on the measured output error (None: none; the summed-error bound
            still applies).
        max_site_fits: With at most this many sites, after the class fit each site is measured
            alone and re-weighted by its own measured / predicted ratio (`ErrorModel.fit_sites`).
        uniform_plans: family -> (share -> plan), measured as competitors after the rounds (with
            `measure_error`, `plan_error`, `predict` and real measurements only).
        uniform_variants: family -> {variant -> (share -> plan)}: measured after the families, for
            the family whose plan measured the least output error within the budget only (e.g. the
            share graded with depth).
    """
    n = n_sites if n_sites is not None else len(options)
    scale = table_dense_ms / dense_now_ms
    user_budget = budget_ms * scale
    budget = budget_ms * (1.0 - settings.safety) * scale
    internal = budget
    rounds: list[dict[str, Any]] = []
    model = ErrorModel(dict(site_class or {})) if measure_error is not None else None
    site_errors = {(str(o.group_id), lv.level_id): float(lv.error) for o in options for lv in o.levels}
    searched: Sequence[GroupOptions] = options  # re-weighted once the classes are fitted
    reweighted = False
    unweighted_err: float | None = None  # round 1's measured output error (the plain additive sum's plan)
    bound = max_total_error
    # (measured ms, score, plan, measured output error, summed error): score is the measured output
    # error when there is one, else the summed error
    best: Best | None = None
    result: SearchResult | None = None
    under: float | None = None  # largest internal budget whose plan measured within budget
    over: float | None = None  # smallest internal budget whose plan measured over budget

    def errors_of(levels: Mapping[Hashable, Hashable]) -> dict[str, float]:
        return {str(g): site_errors.get((str(g), k), 0.0) for g, k in levels.items()}

    def error_ok(out_err: float | None) -> bool:
        return max_output_error is None or out_err is None or out_err <= max_output_error

    def consider(measured: float, summed: float, plan: dict[str, Hashable], out_err: float | None) -> None:
        nonlocal best
        score = out_err if out_err is not None else summed
        ok = measured <= budget and error_ok(out_err)
        cand = (measured, score, plan, out_err, summed)
        if best is None:
            best = cand
            return
        best_ok = best[0] <= budget and error_ok(best[3])
        if ok and (not best_ok or score < best[1]):
            best = cand
        elif not ok and not best_ok and measured < best[0]:
            best = cand

    for it in range(settings.max_iters):
        result = choose_levels(searched, internal, base_ms, max_error=bound)
        plan = decode(result)
        measured = measure(plan, result.predicted_ms)
        summed = sum(errors_of(result.levels).values()) if reweighted else result.error
        record: dict[str, Any] = {"round": it + 1, "internal_budget_ms": internal,
                                  "predicted_ms": result.predicted_ms, "measured_ms": measured,
                                  "mean_error": summed / n, "status": result.status}
        out_err: float | None = None
        if model is not None and measure_error is not None:
            errs = errors_of(result.levels)
            record["predicted_output_error"] = model.predict(errs)  # before this round's refit
            out_err = measure_error(plan)
            record["measured_output_error"] = out_err
            same_sites = {str(g) for g in result.levels} == {str(g) for g in plan}
            if it == 0 and dense_plan is not None and site_class and same_sites:
                lightest = {}
                for o in options:
                    cut = [lv for lv in o.levels if lv.error > 0]
                    if cut:
                        lv = min(cut, key=lambda lv: (lv.error, lv.latency_ms))
                        lightest[str(o.group_id)] = (lv.level_id, float(lv.error))
                per_class = model.fit_classes(plan, errs, dense_plan, measure_error, lightest)
                per_site: dict[str, float] = {}
                if 0 < len(options) <= max_site_fits:
                    per_site = model.fit_sites(plan, errs, dense_plan, measure_error, lightest)
                    if per_site:
                        record["measured_output_error_by_site"] = per_site
                        record["site_weights"] = dict(model.site_weights)
                if per_class:
                    record["measured_output_error_by_class"] = per_class
                    record["class_weights"] = dict(model.weights)
                if per_class or per_site:
                    searched = [GroupOptions(o.group_id, [Level(lv.level_id, lv.latency_ms,
                                                                lv.error * model.weight(str(o.group_id)))
                                                          for lv in o.levels]) for o in options]
                    reweighted = True
            if it == 1 and reweighted and unweighted_err is not None and out_err > unweighted_err:
                # the re-weighted errors' first plan measures worse than the plain sum's: the rounds
                # go on with the plain sum (both plans stay candidates, measured)
                searched, reweighted = options, False
                model.weights, model.site_weights = {}, {}
                record["reweighting"] = (f"reverted: measured {out_err:.4g} > {unweighted_err:.4g} "
                                         "of round 1's plan")
            if it == 0:
                unweighted_err = out_err
            model.observe(errs, out_err)
            if max_output_error is not None:
                bound = model.additive_bound(max_output_error)
                record["additive_bound"] = bound
        rounds.append(record)
        logger.info("search round %d: internal %.4f ms, predicted %.4f, measured %.4f, error %.4f%s",
                    it + 1, internal, result.predicted_ms, measured, summed / n,
                    "" if out_err is None else f", output error {out_err:.4g}")
        meets = measured <= budget
        consider(measured, summed, plan, out_err)
        if meets:
            under = internal if under is None else max(under, internal)
        else:
            over = internal if over is None else min(over, internal)
        if not result.feasible and not meets:
            break  # even the fastest plan the table allows misses: the joint fallback may follow
        # (an infeasible round whose plan meets the budget means a correction overshot: go on)
        if meets and measured >= user_budget * (1.0 - settings.tolerance) and error_ok(out_err) and \
                not (it == 0 and reweighted):
            break  # within [1 - tolerance, 1 - safety] of the user's budget
        if under is not None and over is not None:
            internal = 0.5 * (under + over)  # bracketed: bisect on the internal budget
        else:
            previous = internal
            internal = correct_budget(budget, result.predicted_ms, measured, internal)
            if over is not None:
                internal = min(internal, over * 0.999)
            if internal == previous and not (it == 0 and reweighted):
                break  # the correction is a fixed point: the next round would repeat this one
                # (unless the errors were just re-weighted: the same budget then gives another plan)
    assert best is not None and result is not None
    if uniform_plans and measure_error is not None and has_measurements and plan_error is not None \
            and predict is not None:
        ratios = [r["measured_ms"] / r["predicted_ms"] for r in rounds if r["predicted_ms"] > 0]
        ratio = float(sorted(ratios)[len(ratios) // 2]) if ratios else 1.0

        def candidate(fam: str, make: Callable[[float], dict[str, Hashable]]) -> float | None:
            return _uniform_candidate(fam, make, ratio, budget, user_budget, max_total_error, n, plan_error,
                                      predict, measure, measure_error, model, rounds, settings, consider)

        found = {fam: e for fam, make in uniform_plans.items() if (e := candidate(fam, make)) is not None}
        if found and uniform_variants:  # the graded variants of the family that measured best
            top = min(found, key=lambda f: found[f])
            for fam, make in uniform_variants.get(top, {}).items():
                candidate(fam, make)
    if best[0] > budget and has_measurements and joint_plan is not None:
        assert plan_error is not None and predict is not None
        best = _joint_fallback(best, budget, user_budget, max_total_error, n, joint_plan, plan_error,
                               measure, predict, rounds, settings, measure_error, consider_fn=consider,
                               get_best=lambda: best)
    measured, _score, plan, out_err, error = best
    reached = measured <= user_budget and error_ok(out_err)
    last: SearchResult | None = result
    if reached and not result.feasible:
        last = None  # met by a measured joint plan the additive table did not predict
    unreachable = None
    if not reached:
        if measured <= user_budget:
            unreachable = (f"the plans that meet the budget measure output error {out_err:.4g} > "
                           f"bound {max_output_error:.4g}")
        else:
            unreachable = result.message if not result.feasible else (
                f"measured {measured / scale:.4g} ms after {len(rounds)} rounds")
    return Outcome(plan, measured, error, rounds, last, reached, unreachable, scale, out_err, model)


def _uniform_candidate(
    family: str,
    make: Callable[[float], dict[str, Hashable]],
    ratio: float,
    budget: float,
    user_budget: float,
    bound: float,
    n: int,
    plan_error: Callable[[Mapping[str, Hashable]], float],
    predict: Callable[[Mapping[str, Hashable]], float],
    measure: MeasureFn,
    measure_error: ErrorFn,
    model: ErrorModel | None,
    rounds: list[dict[str, Any]],
    settings: LoopSettings,
    consider: Callable[[float, float, dict[str, Hashable], float | None], None],
) -> float | None:
    """Measure one family's plan at the share the table, scaled by `ratio` (measured / predicted),
    puts at `budget`; once more at the family's own ratio when that misses the budget or lands
    more than the tolerance under it; and when those two measured shares bracket the budget (one
    over it, one more than the tolerance under it), once more at the share interpolated between
    their measured latencies. Returns the least output error measured within the budget."""

    def share_for(r: float) -> float | None:
        hi = settings.joint_max_share
        if predict(make(hi)) * r > budget:
            return None  # even the deepest share is predicted over the budget
        lo = 0.0
        for _ in range(24):  # the least share predicted within the budget (predictions fall with it)
            mid = 0.5 * (lo + hi)
            if predict(make(mid)) * r <= budget:
                hi = mid
            else:
                lo = mid
        return hi

    tried: list[dict[str, Hashable]] = []
    measured_at: list[tuple[float, float]] = []  # (share, measured ms)
    r = ratio
    best: float | None = None
    for attempt in range(3):
        share = share_for(r) if attempt < 2 else _bracketed_share(measured_at, budget)
        if share is None and attempt == 2:
            return best
        if share is None:
            rounds.append({"round": len(rounds) + 1, "status": "uniform-candidate", "family": family,
                           "skipped": "the table puts its deepest share over the budget"})
            return best
        plan = make(share)
        if plan in tried:
            return best
        tried.append(plan)
        error = plan_error(plan)
        if error > bound:
            rounds.append({"round": len(rounds) + 1, "status": "uniform-candidate", "family": family,
                           "uniform_share": round(share, 4), "skipped": "summed error over the bound"})
            return best
        predicted = predict(plan)
        measured = measure(plan, predicted)
        out_err = measure_error(plan)
        record: dict[str, Any] = {"round": len(rounds) + 1, "status": "uniform-candidate", "family": family,
                                  "uniform_share": round(share, 4), "predicted_ms": predicted,
                                  "measured_ms": measured, "mean_error": error / n,
                                  "measured_output_error": out_err}
        if model is not None:
            record["predicted_output_error"] = model.predict({str(g): plan_error({g: k}) for g, k in plan.items()})
        rounds.append(record)
        logger.info("uniform candidate %s: share %.4f, predicted %.4f, measured %.4f, output error %.4g",
                    family, share, predicted, measured, out_err)
        if attempt == 2:
            record["interpolated"] = True
        consider(measured, error, plan, out_err)
        measured_at.append((share, measured))
        if measured <= budget and (best is None or out_err < best):
            best = out_err
        if budget >= measured >= user_budget * (1.0 - settings.tolerance) or attempt == 2 or predicted <= 0:
            return best
        r = measured / predicted  # this family's own measured / predicted ratio
    return best


def _bracketed_share(measured_at: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The share at which the line through two measured (share, ms) points, one over `budget` and
    one under it, meets the budget; None unless the points bracket it with the over one at the
    lesser share (deeper shares are faster)."""
    over = [(s, m) for s, m in measured_at if m > budget]
    under = [(s, m) for s, m in measured_at if m <= budget]
    if not over or not under:
        return None
    (s0, m0), (s1, m1) = max(over), min(under)  # the closest pair around the budget
    if not s0 < s1 or not m0 > m1:
        return None
    share = s0 + (s1 - s0) * (m0 - budget) / (m0 - m1)
    return share if s0 < share < s1 else None


def _joint_fallback(
    best: Best,
    budget: float,
    user_budget: float,
    bound: float,
    n: int,
    joint_plan: Callable[[float], dict[str, Hashable]],
    plan_error: Callable[[Mapping[str, Hashable]], float],
    measure: MeasureFn,
    predict: Callable[[Mapping[str, Hashable]], float],
    rounds: list[dict[str, Any]],
    settings: LoopSettings,
    measure_error: ErrorFn | None,
    *,
    consider_fn: Callable[[float, float, dict[str, Hashable], float | None], None],
    get_best: Callable[[], Best | None],
) -> Best:
    """Bisect one shared share of every site on measurements, within the error bound."""
    lo, hi = 0.0, settings.joint_max_share
    share = hi
    for _ in range(settings.joint_rounds):
        plan = joint_plan(share)
        error = plan_error(plan)
        if error > bound:
            hi = share  # too much error at this share: try less
            share = 0.5 * (lo + hi)
            continue
        predicted = predict(plan)
        measured = measure(plan, predicted)
        record: dict[str, Any] = {"round": len(rounds) + 1, "uniform_share": round(share, 4),
                                  "predicted_ms": predicted, "measured_ms": measured,
                                  "mean_error": error / n, "status": "joint-fallback"}
        out_err = None
        if measure_error is not None:
            out_err = measure_error(plan)
            record["measured_output_error"] = out_err
        rounds.append(record)
        consider_fn(measured, error, plan, out_err)
        if measured <= budget:
            if measured >= user_budget * (1.0 - settings.tolerance):
                break
            hi = share
        else:
            if share >= settings.joint_max_share:
                break  # even every site at its deepest level misses: unreachable
            lo = share
        share = 0.5 * (lo + hi)
    out = get_best()
    assert out is not None
    return out


def plan_of(result: SearchResult) -> dict[str, Hashable]:
    """The default decode: the knapsack's site -> variant choice as a plan."""
    return {str(g): k for g, k in result.levels.items()}


__all__ = ["CandidateTimer", "LoopSettings", "Outcome", "Plan", "meet_budget", "plan_of"]

"""Latency-driven structured pruning: per-group levels chosen to meet a measured latency budget.

Before:  every coupled-channel group dense (heads, FFN neurons, conv channels).
After:   each prunable group keeps k_g of its units, chosen by dynamic programming to minimize the
         summed criterion error subject to the latency budget (ZipLM / SPDY), and verified by timing
         the whole rewritten model: while the measurement misses the budget the internal budget is
         corrected by the measured/predicted gap and the search repeated. With OBS criteria the
         consumers' remaining weights are re-fitted (exact least squares on the kept columns).

Without a budget, every group loses the same share `ratio` of its units (uniform pruning with the
chosen criterion). A budget that cannot be met without more than `max-error` mean relative error
(default: the context's, else 0.35) is reported unreachable, with the best latency that can be
reached within the bound, and the model is pruned to that best point instead of being gutted.

Requirements: a latency model (a measured provider or a latency table) when a budget is given;
calibration data for criterion obs/wanda.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from spa_compiler.groups.analysis import ALL_UNITS, ChannelGroup, GroupAnalysis, analyze, prune_groups
from spa_compiler.context import CompileContext
from spa_compiler.criteria.paths import CRITERIA, GroupPath, group_paths
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.criteria.moment_sources import BATCHNORM
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.requirements import Requirement

logger = logging.getLogger(__name__)

DEFAULT_MAX_ERROR = 0.35
#: Data-free statistics of a non-language model read at most this many samples (leading axis) of
#: random input in all: 8 feeds at batch <= 8, 2 feeds at batch 32 (see `PruneZipLMPass._synthetic`).
SYNTHETIC_SAMPLES = 64


def apply_plan(
    model: ModelIR,
    groups: Mapping[str, ChannelGroup],
    paths: Mapping[str, GroupPath],
    kept: Mapping[str, int],
    *,
    units: tuple[str, ...],
    validate: bool = True,
    analysis: GroupAnalysis | None = None,
    compensate: bool = True,
) -> dict[str, Any]:
    """Prune `model` in place to `kept` units per group, writing compensated weights first.

    `compensate=False` skips the re-fit (least-squares solves): a candidate that is only timed has
    the same latency with any weight values, so the search pays for the solves once, at the end.

    `analysis`: an `analyze(..., units=units)` of `model` or of the model `model` was cloned
    from; it is rebound to `model` (`GroupAnalysis.for_clone`, no new analysis) and is itself
    left unconsumed, so one analysis serves any number of calls. Without it `model` is analysed.
    """
    tensors = model.tensors()
    compensated = 0
    skipped_shared = 0
    done: set[str] = set()
    plan: dict[str, list[int]] = {}
    for gid, k in kept.items():
        path = paths[gid]
        if k >= path.n_units:
            continue
        plan[gid] = path.removed(k)
        for i, w in (path.compensated(k) if compensate else {}).items():
            view = path.views[i]
            const = tensors.get(view.const.name)
            if const is None or view.const.name in done:
                continue
            if len(const.outputs) != 1:  # shared weight: never re-fit it for one reader only
                skipped_shared += 1
                continue
            const.values = w
            done.add(view.const.name)
            compensated += 1
    if not plan:
        stats: dict[str, Any] = {"groups_pruned": 0}
    else:
        bound = analysis.for_clone(model) if analysis is not None else analyze(model, units=units)
        stats = prune_groups(model, plan, analysis=bound, validate=validate)
    stats = {k: v for k, v in stats.items() if k != "removed"}  # per-unit lists go to details
    stats["weights_refitted"] = compensated
    stats["refit_skipped_shared"] = skipped_shared
    return stats


def _language_model_io(model: ModelIR) -> tuple[str, int] | None:
    """(token input name, vocabulary) if the model maps token ids to next-token logits."""
    from spa_compiler.ort import _gather_rows

    ints = [t for t in model.graph.inputs if np.issubdtype(np.dtype(t.dtype), np.integer) and _gather_rows(t)]
    if not ints or len(model.graph.outputs) != 1:
        return None
    vocab = _gather_rows(ints[0])
    out = model.graph.outputs[0]
    if out.shape is None or not out.shape or out.shape[-1] != vocab:
        return None
    return ints[0].name, int(vocab)


def self_generated(
    model: ModelIR, feeds: list[dict[str, np.ndarray]], *, rounds: int, seed: int, top_k: int = 50
) -> list[dict[str, np.ndarray]]:
    """Data-free inputs that look like the model's own text (language models only).

    Uniformly random tokens are far from text. Each round runs the model once on every sequence and
    re-samples all tokens after the first, in parallel, from the model's own top-k next-token
    distribution at the previous position, so after a few rounds the sequences follow the model's
    statistics. Other models get `feeds` back unchanged.
    """
    io = _language_model_io(model)
    if io is None or rounds <= 0:
        return feeds
    from spa_compiler.ort import make_session

    name, vocab = io
    sess = make_session(model, optimize=True)
    rng = np.random.default_rng(seed)
    out = []
    for feed in feeds:
        ids = np.array(feed[name])
        for _ in range(rounds):
            (logits,) = sess.run(None, {**feed, name: ids})
            logits = np.asarray(logits[..., :-1, :], dtype=np.float64)
            top = np.argpartition(-logits, top_k, axis=-1)[..., :top_k]
            z = np.take_along_axis(logits, top, axis=-1)
            p = np.exp(z - z.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            u = rng.random(p.shape[:-1] + (1,))
            choice = np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), top_k - 1)
            ids[..., 1:] = np.take_along_axis(top, choice[..., None], axis=-1)[..., 0].astype(ids.dtype)
        out.append({**feed, name: ids})
    return out


@dataclasses.dataclass(frozen=True)
class PruneZipLMPass(Pass):
    """Prune coupled-channel groups to a latency budget (or a uniform ratio) with a chosen criterion.

    Options:
        criterion: auto (obs with --calib, else obspa), obs, obspa, wanda or magnitude.
        units: Unit kinds to prune: channel, head, neuron, head_dim.
        ratio: Share of units removed per group when no latency budget is given.
        max_ratio: At most this share of any group's units is removed.
        round_to: Kept widths are multiples of this (0: with a budget the target's multiple, see
            targets.width_multiple; without one 1, the ratio as asked).
        levels: Levels per group in the latency search (dense included).
        max_iters: Measure-and-correct rounds of the search.
        tolerance: Accept a measured latency within this fraction under the budget.
        safety: Aim this fraction under the budget, against timing noise in the final check.
        max_error: Mean relative error bound (negative: the context's or the default).
        synthetic_feeds: Random input feeds the data-free criterion (obspa) uses (at most
            SYNTHETIC_SAMPLES samples in all; language models: as many as synthetic_tokens need).
        moments: obspa: auto (BatchNorm closed form where it applies) or response (random inputs).
        synthetic_tokens: For language models, at least this many synthetic tokens in all (more feeds
            of the input shape when it is short).
        lm_rounds: For language models, rounds of re-sampling the random tokens from the model itself.
        uniform: With a latency budget, remove the same share of units from every group and search
            that share (not per-group levels) to meet the budget: the common tools' baseline, at
            the same measured latency as the per-group search.
    """

    name: ClassVar[str] = "prune-ziplm"

    criterion: str = "auto"
    units: tuple[str, ...] = ("channel", "head", "neuron")
    ratio: float = 0.25
    max_ratio: float = 0.75
    round_to: int = 0
    levels: int = 8
    max_iters: int = 8
    tolerance: float = 0.05
    safety: float = 0.015
    max_error: float = -1.0
    synthetic_feeds: int = 8
    synthetic_tokens: int = 4096
    lm_rounds: int = 4
    uniform: bool = False
    moments: str = "auto"

    def requirements(self) -> frozenset[Requirement]:
        req = {Requirement.STATIC_SHAPES}
        if self.criterion in ("obs", "wanda"):
            req.add(Requirement.CALIBRATION)
        return frozenset(req)

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        del model
        if self.criterion not in ("auto", *CRITERIA):
            raise PreconditionError(f"prune-ziplm: criterion must be auto or one of {CRITERIA}, not {self.criterion!r}")
        bad = [u for u in self.units if u not in ALL_UNITS or u == "hidden"]
        if bad:
            raise PreconditionError(f"prune-ziplm: unknown units {bad}; use channel, head, neuron, head_dim")
        if not 0.0 <= self.ratio < 1.0 or not 0.0 < self.max_ratio < 1.0:
            raise PreconditionError("prune-ziplm: ratio must be in [0, 1) and max-ratio in (0, 1)")
        if not 0.0 <= self.safety < self.tolerance:
            raise PreconditionError("prune-ziplm: safety must be in [0, tolerance)")
        if self.moments not in ("auto", "response"):
            raise PreconditionError(f"prune-ziplm: moments must be auto or response, not {self.moments!r}")
        if self.levels < 2 or self.max_iters < 1 or self.round_to < 0:
            raise PreconditionError("prune-ziplm: levels >= 2, max-iters >= 1, round-to >= 0 (0: the target's)")
        if ctx.budget_ms is not None and ctx.latency is None and ctx.latency_table is None:
            raise PreconditionError(
                "prune-ziplm: a latency budget needs a latency model",
                hint="allow measurement (drop --no-measure) or pass --latency-table",
            )

    # ------------------------------------------------------------------ helpers
    def _criterion(self, ctx: CompileContext) -> str:
        if self.criterion != "auto":
            return self.criterion
        return "obs" if ctx.calibration is not None else "obspa"

    def _synthetic(self, ctx: CompileContext, model: ModelIR) -> list[dict[str, np.ndarray]]:
        from spa_compiler.ort import random_feeds

        first = random_feeds(model, ctx.input_shapes, seed=ctx.seed + 1)
        n = self.synthetic_feeds
        io = _language_model_io(model)
        if io is not None:  # a short latency shape (1x128) must not starve the statistics
            # ... and a long one (8x512) needs one feed, not synthetic_feeds of them
            n = -(-self.synthetic_tokens // max(1, int(np.asarray(first[io[0]]).size)))
        else:  # at most SYNTHETIC_SAMPLES samples in all: the cost must not grow with the deploy batch
            batch = max(1, int(np.asarray(next(iter(first.values()))).shape[0])) if first else 1
            n = min(n, max(1, -(-SYNTHETIC_SAMPLES // batch)))
        feeds = [first, *(random_feeds(model, ctx.input_shapes, seed=ctx.seed + 1 + i) for i in range(1, n))]
        return self_generated(model, feeds, rounds=self.lm_rounds, seed=ctx.seed)

    def _bound(self, ctx: CompileContext) -> float:
        if self.max_error >= 0:
            return self.max_error
        return ctx.max_error if ctx.max_error is not None else DEFAULT_MAX_ERROR

    # ------------------------------------------------------------------ run
    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        ctx.progress("channel groups", 0, 1)
        analysis = analyze(model, units=self.units)
        ctx.progress("channel groups", 1, 1)
        groups = {g.id: g for g in analysis.prunable}
        skipped: dict[str, int] = {}
        for g in analysis.groups:
            if g.frozen:
                key = f"frozen:{(g.reason or 'unknown').split(':')[0]}"
                skipped[key] = skipped.get(key, 0) + 1
        if not groups:
            return PassResult(model, modified=False, stats={"groups": 0}, skipped=skipped)
        criterion = self._criterion(ctx)
        paths = group_paths(
            model,
            list(groups.values()),
            criterion,
            max_ratio=self.max_ratio,
            calibration=ctx.calibration,
            synthetic_feeds=self._synthetic(ctx, model) if criterion == "obspa" else None,
            closed_form=self.moments == "auto",
            seed=ctx.seed,
            progress=ctx.progress,
        )
        for p in paths.values():
            if p.note:
                skipped[f"criterion-fallback:{p.note.split(':')[-1].strip()}"] = (
                    skipped.get(f"criterion-fallback:{p.note.split(':')[-1].strip()}", 0) + 1
                )
        moment_stats = self._moment_counts(paths.values()) if criterion == "obspa" else {}
        from spa_compiler.latency.profile import kept_levels
        from spa_compiler.targets import width_multiple

        # with a budget, widths the target runs fast at (the measured search decides what pays);
        # a plain ratio is honoured as asked unless round_to is given
        round_to = self.round_to or (width_multiple(ctx.target) if ctx.budget_ms is not None else 1)
        levels = {
            gid: [k for k in kept_levels(g.n_units, g.unit_size, round_to=round_to,
                                         max_ratio=self.max_ratio, count=self.levels)
                  if g.n_units - k < len(paths[gid].errors)]
            for gid, g in groups.items()
        }
        if ctx.budget_ms is None:
            kept = {gid: self._uniform(g, levels[gid], self.ratio) for gid, g in groups.items()}
            stats = apply_plan(model, groups, paths, kept, units=self.units, analysis=analysis)
            details = [self._detail(groups[g], paths[g], k) for g, k in kept.items()]
            stats.update(criterion=criterion, mode="uniform", ratio=self.ratio,
                         mean_error=float(np.mean([paths[g].error_at(k) for g, k in kept.items()])),
                         **moment_stats)
            return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats,
                              skipped=skipped, details=details)
        # every kept width the paths allow, so a shared share can be fine-grained (uniform plans)
        fine = {
            gid: [k for k in kept_levels(g.n_units, g.unit_size, round_to=round_to,
                                         max_ratio=self.max_ratio, count=g.n_units + 1)
                  if g.n_units - k < len(paths[gid].errors)]
            for gid, g in groups.items()
        }
        result = self._search(model, ctx, groups, paths, levels, criterion, skipped, analysis, fine)
        return dataclasses.replace(result, stats={**result.stats, **moment_stats})

    @staticmethod
    def _moment_counts(paths: Iterable[GroupPath]) -> dict[str, int]:
        """Consumers per moment source, e.g. {"moments_batchnorm": 3, "moments_random_input": 1}."""
        counts = {"moments_batchnorm": 0, "moments_random_input": 0}
        for p in paths:
            for src in p.view_moments:
                key = "moments_batchnorm" if src == BATCHNORM else "moments_random_input"
                counts[key] += 1
        return counts

    @staticmethod
    def _uniform(g: ChannelGroup, levels: list[int], ratio: float) -> int:
        target = g.n_units - int(round(g.n_units * ratio))
        ok = [k for k in levels if k >= target]
        return min(ok) if ok else g.n_units

    def _joint_fallback(self, best: tuple[float, float, dict[str, int]], budget: float, user_budget: float,
                        bound: float, n_groups: int, paths: Mapping[str, GroupPath], uniform_plan: Any,
                        measure: Any, predict: Any, rounds: list[dict[str, Any]]) -> tuple[float, float, dict[str, int]]:
        """Before calling a budget unreachable, measure plans that prune every group at once.

        The latency table is profiled one layer kind at a time and assumed additive; on GPUs pruning
        every kind together can gain more than the sum (MiniLM on the H200: the table's fastest plan
        measured 0.71x, every group at its deepest level 0.64x). So one shared share is bisected on
        measurements alone, within the error bound, keeping the best plan that meets the budget.
        """
        lo, hi = 0.0, self.max_ratio
        share = hi
        for _ in range(4):
            kept = uniform_plan(share)
            error = sum(paths[g].error_at(k) for g, k in kept.items())
            if error > bound * n_groups:
                hi = share  # too much error at this share: try less
                share = 0.5 * (lo + hi)
                continue
            predicted = predict(kept)
            measured = measure(kept, predicted)
            rounds.append({"round": len(rounds) + 1, "uniform_share": round(share, 4), "predicted_ms": predicted,
                           "measured_ms": measured, "mean_error": error / n_groups, "status": "joint-fallback"})
            if measured <= budget:
                if best[0] > budget or error < best[1]:
                    best = (measured, error, kept)
                if measured >= user_budget * (1.0 - self.tolerance):
                    break
                hi = share
            else:
                if best[0] > budget and measured < best[0]:
                    best = (measured, error, kept)
                if share >= self.max_ratio:
                    break  # even every group at its deepest level misses: unreachable
                lo = share
            share = 0.5 * (lo + hi)
        return best

    @staticmethod
    def _detail(g: ChannelGroup, p: GroupPath, k: int, latency: float | None = None) -> dict[str, Any]:
        d = {"group": g.id, "unit": g.unit, "units": g.n_units, "kept": k, "unit_size": g.unit_size,
             "error": round(p.error_at(k), 6), "criterion": p.criterion}
        if latency is not None:
            d["latency_ms"] = round(latency, 6)
        if p.moments:
            d["moments"] = p.moments
        if p.note:
            d["note"] = p.note
        return d

    def _search(
        self,
        model: ModelIR,
        ctx: CompileContext,
        groups: dict[str, ChannelGroup],
        paths: dict[str, GroupPath],
        levels: dict[str, list[int]],
        criterion: str,
        skipped: dict[str, int],
        analysis: GroupAnalysis | None = None,
        fine_levels: dict[str, list[int]] | None = None,
    ) -> PassResult:
        from spa_compiler.latency.profile import build_table
        from spa_compiler.search.knapsack import GroupOptions, Level, choose_levels, correct_budget

        assert ctx.budget_ms is not None
        user_budget = float(ctx.budget_ms)
        # aim a little under the budget: the final paired timing has its own noise (~1-2%)
        budget = user_budget * (1.0 - self.safety)
        table = ctx.latency_table
        if table is not None:
            from spa_compiler.latency.table import structure_fingerprint

            table.check_compatible(
                model_fingerprint=ctx.options.get("input_fingerprint") or structure_fingerprint(model.to_proto()),
                input_shapes=ctx.input_shapes or None,
                groups={gid: g.n_units for gid, g in groups.items()},
                subset=True,  # the pass may prune only some unit kinds of what was profiled
            )
            # groups the table does not cover stay dense; levels outside its range are not searched
            for gid in list(groups):
                if gid not in table.groups:
                    skipped["not-in-latency-table"] = skipped.get("not-in-latency-table", 0) + 1
                    del groups[gid]
                    continue
                lv = table.groups[gid].levels
                levels[gid] = [k for k in levels[gid] if lv[0].kept_units <= k <= lv[-1].kept_units]
        else:
            table = build_table(model, list(groups.values()), levels, ctx.latency, ctx.feeds or {},
                                units=self.units, input_shapes=ctx.input_shapes, progress=ctx.progress,
                                analysis=analysis)
        def lo_hi(gid: str) -> tuple[int, int]:
            lv = table.groups[gid].levels
            return lv[0].kept_units, lv[-1].kept_units

        bound = self._bound(ctx)
        n_groups = len(groups)
        # what no searched group covers: the table's base and the table's groups this pass leaves dense
        base_ms = table.base_ms + sum(g.dense_ms for gid, g in table.groups.items() if gid not in groups)
        uniform_levels = fine_levels if self.uniform else None

        in_table = {gid: [k for k in (fine_levels or {}).get(gid, []) if lo_hi(gid)[0] <= k <= lo_hi(gid)[1]]
                    for gid in groups}

        def uniform_plan(share: float) -> dict[str, int]:
            assert fine_levels is not None
            return {gid: self._uniform(g, in_table[gid], share) for gid, g in groups.items()}

        if uniform_levels is None:
            options = [
                GroupOptions(gid, [Level(k, table.lookup(gid, k), paths[gid].error_at(k)) for k in levels[gid]])
                for gid in groups
            ]

            def decode(res: Any) -> dict[str, int]:
                return {str(g): int(k) for g, k in res.levels.items()}
        else:
            # uniform: one choice, the shared share removed; its levels are the distinct plans
            plans: list[dict[str, int]] = []
            for r in np.linspace(0.0, self.max_ratio, 97):
                plan = uniform_plan(float(r))
                if not plans or plan != plans[-1]:
                    plans.append(plan)
            options = [GroupOptions("uniform", [
                Level(i, sum(table.lookup(g, k) for g, k in plan.items()),
                      sum(paths[g].error_at(k) for g, k in plan.items()))
                for i, plan in enumerate(plans)])]

            def decode(res: Any) -> dict[str, int]:
                return dict(plans[int(res.levels["uniform"])])
        # The search works in the table's milliseconds: the table may come from another run (other
        # load, another day), while the user's budget is relative to the dense model measured now.
        dense_now = float(ctx.options.get("dense_ms") or table.dense_ms)
        scale = table.dense_ms / dense_now
        user_budget_ms, aimed_ms = user_budget, budget
        user_budget, budget = user_budget * scale, budget * scale
        dense_ref = table.dense_ms
        internal = budget
        rounds: list[dict[str, Any]] = []
        best: tuple[float, float, dict[str, int]] | None = None  # (measured, error, kept)
        result = None
        under: float | None = None  # largest internal budget whose model measured within budget
        over: float | None = None  # smallest internal budget whose model measured over budget
        seen: dict[tuple[tuple[str, int], ...], float] = {}
        from spa_compiler.latency.cache import entry_key, provider_cache

        timings = provider_cache(model, ctx.input_shapes, ctx.latency)  # earlier runs' candidates

        def measure(kept: dict[str, int], predicted: float) -> float:
            key = tuple(sorted(kept.items()))
            if key not in seen:
                entry = entry_key("candidate", [list(kv) for kv in key])
                hit = timings.get(entry) if timings is not None else None
                if ctx.latency is None:
                    seen[key] = predicted
                elif hit is not None:
                    seen[key] = hit[0] * dense_ref
                else:
                    ctx.progress("measure candidate", 0, 1)
                    clone = model.clone()
                    apply_plan(clone, groups, paths, kept, units=self.units, validate=False, analysis=analysis,
                               compensate=False)  # timed only: weight values do not change latency
                    # dense and candidate timed in alternation: their ratio, times the reference
                    # dense latency, is immune to changes of machine load during the search
                    t_dense, t_cand = ctx.latency.time_many([model, clone], ctx.feeds or {})
                    seen[key] = t_cand.ms / t_dense.ms * dense_ref
                    del clone
                    if timings is not None:
                        timings.put(entry, t_cand.ms / t_dense.ms, t_dense.ms)
                        timings.flush()
                    ctx.progress("measure candidate", 1, 1)
            return seen[key]

        for it in range(self.max_iters):
            result = choose_levels(options, internal, base_ms, max_error=bound * n_groups)
            kept = decode(result)
            measured = measure(kept, result.predicted_ms)
            rounds.append({"round": it + 1, "internal_budget_ms": internal, "predicted_ms": result.predicted_ms,
                           "measured_ms": measured, "mean_error": result.error / n_groups,
                           "status": result.status})
            logger.info("search round %d: internal %.4f ms, predicted %.4f, measured %.4f, error %.4f",
                        it + 1, internal, result.predicted_ms, measured, result.error / n_groups)
            meets = measured <= budget
            if meets:
                if best is None or best[0] > budget or result.error < best[1]:
                    best = (measured, result.error, kept)
                under = internal if under is None else max(under, internal)
            else:
                if best is None or (best[0] > budget and measured < best[0]):
                    best = (measured, result.error, kept)
                over = internal if over is None else min(over, internal)
            if not result.feasible and not meets:
                break  # even the fastest plan the table allows misses: the joint fallback may follow
            # (an infeasible round whose plan meets the budget means a correction overshot: go on)
            if meets and measured >= user_budget * (1.0 - self.tolerance):
                break  # within [1 - tolerance, 1 - safety] of the user's budget
            if under is not None and over is not None:
                internal = 0.5 * (under + over)  # bracketed: bisect on the internal budget
            else:
                internal = correct_budget(budget, result.predicted_ms, measured, internal)
                if over is not None:
                    internal = min(internal, over * 0.999)
        assert best is not None and result is not None
        if best[0] > budget and ctx.latency is not None and uniform_levels is None:
            best = self._joint_fallback(best, budget, user_budget, bound, n_groups, paths, uniform_plan, measure,
                                        table.predict_ms, rounds)
        measured, error, kept = best
        stats = apply_plan(model, groups, paths, kept, units=self.units, analysis=analysis)
        reached = measured <= user_budget
        if reached and not result.feasible:
            result = None  # met by a measured uniform plan the additive table did not predict
        stats.update(
            criterion=criterion,
            mode="uniform-search" if uniform_levels is not None else "latency-search",
            budget_ms=user_budget_ms,
            aimed_ms=aimed_ms,
            predicted_ms=rounds[-1]["predicted_ms"] / scale,
            measured_ms=measured / scale,
            dense_ms=dense_now,
            table_dense_ms=table.dense_ms,
            table_kind=table.kind,
            mean_error=error / n_groups,
            max_mean_error=bound,
            budget_met=reached,
            search_rounds=len(rounds),
        )
        if not reached:
            stats["unreachable"] = result.message if result is not None and not result.feasible else (
                f"measured {measured / scale:.4g} ms after {len(rounds)} rounds")
            ctx.report.notes.append(
                f"prune-ziplm: budget {user_budget_ms:.4g} ms unreachable within mean error {bound:.3g}: "
                f"best reachable {measured / scale:.4g} ms ({stats['unreachable']})"
            )
        details = [self._detail(groups[g], paths[g], k, table.lookup(g, k)) for g, k in kept.items()]
        details.append({"search_rounds": rounds, "search_units": f"latency-table ms (table dense {table.dense_ms:.4g} ms, "
                        f"dense now {dense_now:.4g} ms)",
                        "latency_table": table.provenance.__dict__ | {"kind": table.kind}})
        return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats, skipped=skipped,
                          details=details)

"""What the two pruning passes share: their options, and options -> method + search.

`prune-uniform` removes the same share of units from every group; `prune-to-budget` chooses a
level per group. Both score groups with one criterion registry (`criteria.registry`), build a
`methods.pruning.PruningMethod`, and, with a latency budget, hand its variants to the
measure-and-correct loop (`search.loop.meet_budget`). The report is written by the PassManager from
the PassResult (stats, details, notes); the passes never touch it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable
from typing import Any

import numpy as np

from spa_compiler.context import CompileContext
from spa_compiler.criteria.magnitude import norm_power
from spa_compiler.criteria.registry import CRITERIA, resolve
from spa_compiler.errors import PreconditionError
from spa_compiler.groups.analysis import ALL_UNITS
from spa_compiler.ir import ModelIR
from spa_compiler.latency.table import GroupLatency
from spa_compiler.methods.pruning import PruningMethod
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.requirements import Requirement
from spa_compiler.search.knapsack import GroupOptions, Level, SearchResult
from spa_compiler.search.loop import CandidateTimer, LoopSettings, meet_budget

logger = logging.getLogger(__name__)

#: The mean relative error above which a budget counts as unreachable, unless the user says.
DEFAULT_MAX_ERROR = 0.35


@dataclasses.dataclass(frozen=True)
class PruningPass(Pass):
    """Base of the pruning passes (not registered itself)."""

    criterion: str = "auto"
    units: tuple[str, ...] = ("channel", "head", "neuron")
    ratio: float = 0.25
    max_ratio: float = 0.75
    round_to: int = 0
    norm: str = "l2"
    normalize: bool = False
    min_units: int = 1
    include_hidden: bool = False
    max_iters: int = 8
    tolerance: float = 0.05
    safety: float = 0.015
    max_error: float = -1.0
    synthetic_feeds: int = 8
    synthetic_tokens: int = 4096
    lm_rounds: int = 4
    moments: str = "auto"

    #: How many levels per group the method offers (prune-to-budget's `levels` option).
    def _level_count(self) -> int:
        return 8

    def requirements(self) -> frozenset[Requirement]:
        # magnitude reads weights only; every other criterion runs the model (and a budget times it)
        req = set() if self.criterion == "magnitude" else {Requirement.STATIC_SHAPES}
        if self.criterion in CRITERIA and CRITERIA[self.criterion].needs_calibration:
            req.add(Requirement.CALIBRATION)
        return frozenset(req)

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        del model
        n = self.name
        if self.criterion not in ("auto", *CRITERIA):
            raise PreconditionError(f"{n}: criterion must be auto or one of {tuple(CRITERIA)}, not {self.criterion!r}")
        allowed = set(ALL_UNITS) - ({"hidden"} if not self.include_hidden else set())
        bad = [u for u in self.units if u not in allowed]
        if bad:
            raise PreconditionError(f"{n}: unknown units {bad}; use channel, head, neuron, head_dim"
                                    + (" (hidden needs include-hidden=true)" if "hidden" in bad else ""))
        if not 0.0 <= self.ratio < 1.0 or not 0.0 < self.max_ratio < 1.0:
            raise PreconditionError(f"{n}: ratio must be in [0, 1) and max-ratio in (0, 1)")
        if not 0.0 <= self.safety < self.tolerance:
            raise PreconditionError(f"{n}: safety must be in [0, tolerance)")
        if self.moments not in ("auto", "response"):
            raise PreconditionError(f"{n}: moments must be auto or response, not {self.moments!r}")
        if self.norm not in ("l1", "l2"):
            raise PreconditionError(f"{n}: norm must be l1 or l2, not {self.norm!r}")
        if self._level_count() < 2 or self.max_iters < 1 or self.round_to < 0 or self.min_units < 1:
            raise PreconditionError(f"{n}: levels >= 2, max-iters >= 1, min-units >= 1, round-to >= 0 (0: the target's)")
        if ctx.budget_ms is not None and ctx.latency is None and ctx.latency_table is None:
            raise PreconditionError(
                f"{n}: a latency budget needs a latency model",
                hint="allow measurement (drop --no-measure) or pass --latency-table",
            )

    # ------------------------------------------------------------------ options -> method
    def _bound(self, ctx: CompileContext) -> float:
        if self.max_error >= 0:
            return self.max_error
        return ctx.max_error if ctx.max_error is not None else DEFAULT_MAX_ERROR

    def _synthetic(self, ctx: CompileContext, model: ModelIR) -> list[dict[str, np.ndarray]]:
        from spa_compiler.synthetic import synthetic_feeds

        return synthetic_feeds(model, ctx.input_shapes, count=self.synthetic_feeds, seed=ctx.seed,
                               min_tokens=self.synthetic_tokens, lm_rounds=self.lm_rounds)

    def _round_to(self, ctx: CompileContext) -> int:
        # with a budget, widths the target runs fast at (the measured search decides what pays);
        # a plain ratio is honoured as asked unless round_to is given
        from spa_compiler.targets import width_multiple

        return self.round_to or (width_multiple(ctx.target) if ctx.budget_ms is not None else 1)

    def build_method(self, model: ModelIR, ctx: CompileContext) -> PruningMethod:
        """Analyse, score every prunable group, list its levels."""
        criterion = resolve(self.criterion, have_calibration=ctx.calibration is not None)
        return PruningMethod.build(
            model, criterion=criterion, units=tuple(self.units), round_to=self._round_to(ctx),
            max_ratio=self.max_ratio, count=self._level_count(), input_shapes=ctx.input_shapes,
            calibration=ctx.calibration,
            synthetic=(lambda: self._synthetic(ctx, model)) if criterion == "obspa" else None,
            closed_form=self.moments == "auto", norm=norm_power(self.norm), normalize=self.normalize,
            include_hidden=self.include_hidden, min_units=self.min_units, seed=ctx.seed, progress=ctx.progress,
        )

    # ------------------------------------------------------------------ no budget: a share
    def prune_share(self, model: ModelIR, ctx: CompileContext, method: PruningMethod) -> PassResult:
        # every width the multiple and the path allow: the ratio is honoured as closely as it can be
        fine = {gid: method.allowed(gid, round_to=self._round_to(ctx), max_ratio=self.max_ratio, count=g.n_units + 1)
                for gid, g in method.groups.items()}
        kept = method.uniform_plan(self.ratio, fine)
        dense = sum(1 for g, k in kept.items() if k >= method.groups[g].n_units)
        if dense:
            method.skipped["nothing-to-remove"] = method.skipped.get("nothing-to-remove", 0) + dense
        stats = method.apply(model, kept)
        details = [method.detail(g, k) for g, k in kept.items()]
        stats.update(criterion=method.criterion, mode="uniform", ratio=self.ratio,
                     mean_error=float(np.mean([method.error(g, k) for g, k in kept.items()])),
                     **self._moment_stats(method))
        return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats,
                          skipped=method.skipped, details=details)

    def _moment_stats(self, method: PruningMethod) -> dict[str, int]:
        return method.moment_counts() if method.criterion == "obspa" else {}

    # ------------------------------------------------------------------ a budget: the search
    def search(self, model: ModelIR, ctx: CompileContext, method: PruningMethod, *, uniform: bool) -> PassResult:
        from spa_compiler.latency.profile import build_table
        from spa_compiler.latency.table import structure_fingerprint
        from spa_compiler.methods.pruning import kept_levels

        assert ctx.budget_ms is not None
        groups = method.groups
        skipped = method.skipped
        table = ctx.latency_table
        if table is not None:
            table.check_compatible(
                model_fingerprint=ctx.input_fingerprint or structure_fingerprint(model.to_proto()),
                input_shapes=ctx.input_shapes or None,
                groups={gid: g.n_units for gid, g in groups.items()},
                subset=True,  # the pass may prune only some unit kinds of what was profiled
            )
            # groups the table does not cover stay dense; levels outside its range are not searched
            for gid in list(groups):
                entry = table.groups.get(gid)
                if not isinstance(entry, GroupLatency):
                    skipped["not-in-latency-table"] = skipped.get("not-in-latency-table", 0) + 1
                    del groups[gid]
                    continue
                lv = entry.levels
                method.levels[gid] = [k for k in method.levels[gid] if lv[0].kept_units <= k <= lv[-1].kept_units]
        else:
            table = build_table(model, method, ctx.latency, ctx.feeds or {}, input_shapes=ctx.input_shapes,
                                progress=ctx.progress)

        def lo_hi(gid: str) -> tuple[int, int]:
            lv = table.groups[gid].levels  # type: ignore[union-attr]
            return lv[0].kept_units, lv[-1].kept_units

        bound = self._bound(ctx)
        n_groups = len(groups)
        # what no searched group covers: the table's base and the table's groups this pass leaves dense
        base_ms = table.base_ms + sum(g.dense_ms for gid, g in table.groups.items() if gid not in groups)
        round_to = self._round_to(ctx)
        # every kept width the paths allow, so a shared share can be fine-grained (uniform plans)
        assert method.paths is not None
        fine = {gid: [k for k in kept_levels(g.n_units, g.unit_size, round_to=round_to, max_ratio=self.max_ratio,
                                             count=g.n_units + 1)
                      if g.n_units - k < len(method.paths[gid].errors) and lo_hi(gid)[0] <= k <= lo_hi(gid)[1]]
                for gid, g in groups.items()}

        def joint_plan(share: float) -> dict[str, Hashable]:
            return dict(method.uniform_plan(share, fine))

        levels = method.levels
        if not uniform:
            options = [GroupOptions(gid, [Level(k, table.lookup(gid, k), method.error(gid, k)) for k in levels[gid]])
                       for gid in groups]

            def decode(res: SearchResult) -> dict[str, Hashable]:
                return {str(g): int(k) for g, k in res.levels.items()}  # type: ignore[call-overload]
        else:
            # uniform: one choice, the shared share removed; its levels are the distinct plans
            plans: list[dict[str, int]] = []
            for r in np.linspace(0.0, self.max_ratio, 97):
                plan = method.uniform_plan(float(r), fine)
                if not plans or plan != plans[-1]:
                    plans.append(plan)
            options = [GroupOptions("uniform", [
                Level(i, sum(table.lookup(g, k) for g, k in plan.items()), method.plan_error(plan))
                for i, plan in enumerate(plans)])]

            def decode(res: SearchResult) -> dict[str, Hashable]:
                return dict(plans[int(res.levels["uniform"])])  # type: ignore[call-overload]

        dense_now = float(ctx.dense_ms or table.dense_ms)
        timer = CandidateTimer(model, method, ctx.latency, ctx.feeds or {}, table.dense_ms,
                               input_shapes=ctx.input_shapes, progress=ctx.progress)
        settings = LoopSettings(max_iters=self.max_iters, tolerance=self.tolerance, safety=self.safety,
                                joint_max_share=self.max_ratio)
        out = meet_budget(
            options, decode, base_ms=base_ms, budget_ms=float(ctx.budget_ms), dense_now_ms=dense_now,
            table_dense_ms=table.dense_ms, measure=timer, max_total_error=bound * n_groups, settings=settings,
            has_measurements=ctx.latency is not None, joint_plan=None if uniform else joint_plan,
            plan_error=method.plan_error, predict=table.predict_ms, n_sites=n_groups,
        )
        kept = {str(g): int(k) for g, k in out.plan.items()}  # type: ignore[call-overload]
        stats: dict[str, Any] = method.apply(model, kept)
        scale = out.scale
        stats.update(
            criterion=method.criterion,
            mode="uniform-search" if uniform else "latency-search",
            budget_ms=float(ctx.budget_ms),
            aimed_ms=float(ctx.budget_ms) * (1.0 - self.safety),
            predicted_ms=out.rounds[-1]["predicted_ms"] / scale,
            measured_ms=out.measured_ms / scale,
            dense_ms=dense_now,
            table_dense_ms=table.dense_ms,
            table_kind=table.kind,
            mean_error=out.error / n_groups,
            max_mean_error=bound,
            budget_met=out.reached,
            search_rounds=len(out.rounds),
            **self._moment_stats(method),
        )
        notes = []
        if not out.reached:
            stats["unreachable"] = out.unreachable
            notes.append(
                f"{self.name}: budget {float(ctx.budget_ms):.4g} ms unreachable within mean error {bound:.3g}: "
                f"best reachable {out.measured_ms / scale:.4g} ms ({out.unreachable})"
            )
        details = [method.detail(g, k, table.lookup(g, k)) | {"latency_dense_ms": round(table.groups[g].dense_ms, 6)}
                   for g, k in kept.items()]
        details.append({"search_rounds": out.rounds, "search_units": f"latency-table ms (table dense "
                        f"{table.dense_ms:.4g} ms, dense now {dense_now:.4g} ms)",
                        "latency_table": table.provenance.__dict__ | {"kind": table.kind, "dense_ms": table.dense_ms,
                                                                      "methods": sorted(table.methods())}})
        return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats, skipped=skipped,
                          details=details, notes=notes)

    def run_pruning(self, model: ModelIR, ctx: CompileContext, *, uniform_search: bool) -> PassResult:
        method = self.build_method(model, ctx)
        if not method.groups:
            return PassResult(model, modified=False, stats={"groups": 0}, skipped=method.skipped)
        if ctx.budget_ms is None:
            return self.prune_share(model, ctx, method)
        return self.search(model, ctx, method, uniform=uniform_search)

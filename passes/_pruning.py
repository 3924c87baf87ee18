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
from collections.abc import Callable, Hashable, Mapping, Sequence
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

#: error-feeds=auto: calibration feeds until the first output holds this many rows (tokens, images).
AUTO_ERROR_ROWS = 1024

#: Below this many calibration rows (tokens, pixels) per input column of the widest-fed consumer,
#: the report says the OBS statistics are thin. On MiniLM-L6 at 0.6x (FFN output 1,536 columns), one
#: fixed plan re-fitted on 4.6 / 18.3 rows per column measured a cosine to dense of 0.923 / 0.929,
#: and the compiled model gained 0.0006 more from 36 (benchmarks/quality/README.md, "Calibration size").
MIN_ROWS_PER_COLUMN = 16


@dataclasses.dataclass(frozen=True)
class PruningPass(Pass):
    """Base of the pruning passes (not registered itself).

    Options:
        criterion: auto (obs with --calib, else obspa), magnitude, wanda, obs or obspa.
        units: Unit kinds to prune: channel, head, neuron, head_dim (hidden with include-hidden).
        ratio: Share of units removed per group when no latency budget is given.
        max_ratio: At most this share of any group's units is removed.
        round_to: Kept widths are multiples of this (0: with a budget the target's multiple, see
            targets.width_multiple; without one 1, the ratio as asked).
        norm: Norm of the magnitude criterion, l1 or l2.
        normalize: Magnitude: divide each member's scores by their mean before summing.
        min_units: Groups with fewer units are left alone.
        include_hidden: Also prune the hidden (residual) width; approximate (norms change).
        max_iters: Measure-and-correct rounds of the search (with a budget).
        tolerance: Accept a measured latency within this fraction under the budget.
        safety: Aim this fraction under the budget, against timing noise in the final check.
        max_error: Mean relative error bound (negative: the context's or the default).
        synthetic_feeds: Random input feeds the data-free criterion (obspa) uses.
        synthetic_tokens: For language models, at least this many synthetic tokens in all (more feeds
            of the input shape when it is short).
        lm_rounds: For language models, rounds of re-sampling the random tokens from the model itself.
        moments: obspa: auto (BatchNorm closed form where it applies) or response (random inputs).
        error_feeds: With a budget, feeds on which every searched plan's end-to-end output error
            against the dense model is measured (see search.output_error): KL of next-token logits,
            else 1 - cosine of outputs. -1 (auto): calibration feeds up to 1024 output rows, off
            without calibration; N > 0: N feeds (calibration, else synthetic); 0: off.
        max_output_error: Bound on that measured output error; plans above it do not count as
            meeting the budget (negative: no bound).
        error_classes: Re-weight each unit kind's errors by its measured / predicted output error
            (measured once, on the first plan, one kind at a time).
        error_sites: With at most this many groups, then also each group alone (its own measured /
            predicted weight; 0: off).
        uniform_candidates: With the output error measured, also measure one share of every group
            of each unit kind (the other kinds dense) and of every group, each at the share the
            corrected table puts at the budget, and keep whichever plan measures the least output
            error within the budget (search.loop: a per-layer error sum can misallocate).
        uniform_graded: Then, for the family that measured best, also its share graded with depth
            (deeper layers cut more, or less). Off by default: on SmolLM2-135M at 0.8x neither
            variant beat one share (4 more measured plans; benchmarks/quality/README.md).
        sequential: obs with calibration: stages of sequential calibration of the chosen plan (each
            stage's statistics from the model with the earlier stages compressed; 0 or 1: one-shot).
        table_sampling: Measured latency tables: time each group kind's levels coarse to fine and
            interpolate where the latency is linear, with a stopping rule per timing
            (latency.sampling); false: time every level a fixed number of runs.
        refit: obs with calibration: "layer" (default) keeps the per-layer OBS re-fit of the pruned
            consumers (each layer faithful to its own inputs); "dense" then re-fits every linear
            layer from the first pruned one on, stage by stage, to the dense model's outputs given
            the compressed model's inputs, bias included (criteria.refit). On MiniLM-L6 at 0.6x,
            for one fixed plan, "dense" measured a lower cosine to dense on held-out text (0.899
            against 0.909, benchmarks/quality/results/ablate-minilm.json), hence not the default.
            "residual": "dense" with a layer whose output goes into a residual Add fitted to the
            dense sum, i.e. its target is W_d x_d + b_d + (r_d − r_c) for the residual r (one such
            layer a stage).
        refit_stages: Stages of the dense re-fit (each one pass of both models over model prefixes).
        refit_synthetic: obspa (no calibration data): the dense re-fit on the synthetic feeds.
    """

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
    error_feeds: int = -1
    max_output_error: float = -1.0
    error_classes: bool = True
    error_sites: int = 32
    uniform_candidates: bool = True
    uniform_graded: bool = False
    sequential: int = 4
    table_sampling: bool = True
    refit: str = "layer"
    refit_stages: int = 4
    refit_synthetic: bool = False

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
        if self.error_feeds < -1 or self.sequential < 0:
            raise PreconditionError(f"{n}: error-feeds must be >= -1 (-1: auto, 0: off) and sequential >= 0")
        if self.refit not in ("dense", "residual", "layer") or self.refit_stages < 1:
            raise PreconditionError(f"{n}: refit must be layer, dense or residual (not {self.refit!r}), refit-stages >= 1")
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

    def _synthetic(self, ctx: CompileContext, model: ModelIR,
                   cache: dict[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        from spa_compiler.synthetic import synthetic_feeds

        if cache is not None and "synthetic" in cache:
            return cache["synthetic"]  # type: ignore[no-any-return]
        feeds = synthetic_feeds(model, ctx.input_shapes, count=self.synthetic_feeds, seed=ctx.seed,
                                min_tokens=self.synthetic_tokens, lm_rounds=self.lm_rounds)
        if cache is not None:
            cache["synthetic"] = feeds
        return feeds

    def _error_probe(self, model: ModelIR, ctx: CompileContext, method: PruningMethod,
                     cache: dict[str, Any]) -> Any:
        """The output-error probe of the search; None when off.

        error_feeds > 0: that many calibration feeds (else the data-free criterion's synthetic
        feeds, the last ones: the most re-sampled). -1 (auto): calibration feeds until the output
        holds AUTO_ERROR_ROWS rows (at most 64 feeds), and off without calibration data: on
        MiniLM-L6 at 0.6x, errors measured on random tokens steered the search to a worse plan
        (cosine to dense 0.63, benchmarks/quality/README.md)."""
        import itertools

        from spa_compiler.search.output_error import OutputErrorProbe

        if self.error_feeds == 0 or (self.error_feeds < 0 and ctx.calibration is None):
            return None
        if ctx.calibration is not None:
            if self.error_feeds < 0:
                return OutputErrorProbe(model, method, iter(ctx.calibration), source="calibration",
                                        min_rows=AUTO_ERROR_ROWS, max_feeds=64)
            feeds = list(itertools.islice(iter(ctx.calibration), self.error_feeds))
            source = "calibration"
        else:
            feeds = self._synthetic(ctx, model, cache)[-self.error_feeds:]
            source = "synthetic"
        if not feeds:
            return None
        return OutputErrorProbe(model, method, feeds, source=source)

    def _round_to(self, ctx: CompileContext) -> int:
        # with a budget, widths the target runs fast at (the measured search decides what pays);
        # a plain ratio is honoured as asked unless round_to is given
        from spa_compiler.targets import width_multiple

        return self.round_to or (width_multiple(ctx.target) if ctx.budget_ms is not None else 1)

    def build_method(self, model: ModelIR, ctx: CompileContext,
                     cache: dict[str, Any] | None = None) -> PruningMethod:
        """Analyse, score every prunable group, list its levels."""
        criterion = resolve(self.criterion, have_calibration=ctx.calibration is not None)
        return PruningMethod.build(
            model, criterion=criterion, units=tuple(self.units), round_to=self._round_to(ctx),
            max_ratio=self.max_ratio, count=self._level_count(), input_shapes=ctx.input_shapes,
            calibration=ctx.calibration,
            synthetic=(lambda: self._synthetic(ctx, model, cache)) if criterion == "obspa" else None,
            closed_form=self.moments == "auto", norm=norm_power(self.norm), normalize=self.normalize,
            include_hidden=self.include_hidden, min_units=self.min_units, seed=ctx.seed, progress=ctx.progress,
            # without a budget the plan is the ratio: no path needs to go further
            share=self.ratio if ctx.budget_ms is None else None,
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
        seq = self._sequential(model, ctx, method, kept)
        # validated by the PassManager (after the pass or at the end, as the user chose), not twice
        stats = method.apply(model, kept, validate=False, progress=ctx.progress)
        stats.update(seq)
        details = [method.detail(g, k) for g, k in kept.items()]
        cov_stats, notes = self._coverage(method, ctx)
        stats.update(criterion=method.criterion, mode="uniform", ratio=self.ratio,
                     mean_error=float(np.mean([method.error(g, k) for g, k in kept.items()])),
                     **self._moment_stats(method), **cov_stats)
        return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats,
                          skipped=method.skipped, details=details, notes=notes)

    def _moment_stats(self, method: PruningMethod) -> dict[str, int]:
        return method.moment_counts() if method.criterion == "obspa" else {}

    def _coverage(self, method: PruningMethod, ctx: CompileContext) -> tuple[dict[str, Any], list[str]]:
        """The calibration's rows per input column (stats) and, when they are few, a report line."""
        cov = method.calibration_coverage() if ctx.calibration is not None and method.criterion == "obs" else None
        if cov is None:
            return {}, []
        stats = {"calibration_rows": cov["rows"], "calibration_rows_per_column": cov["rows_per_column"]}
        if cov["rows_per_column"] >= MIN_ROWS_PER_COLUMN:
            return stats, []
        want = MIN_ROWS_PER_COLUMN * cov["columns"]
        return stats, [
            f"{self.name}: calibration is thin: {cov['rows']} rows (tokens, pixels) for {cov['consumer']}'s "
            f"{cov['columns']} input columns, {cov['rows_per_column']:.3g} per column; the OBS re-fits over-fit "
            f"few rows, and fidelity to the dense model usually rises with more calibration data, up to about "
            f"{MIN_ROWS_PER_COLUMN} per column ({want} rows here)"]

    # ------------------------------------------------------------------ a budget: the search
    def _sequential(self, model: ModelIR, ctx: CompileContext, method: PruningMethod,
                    kept: dict[str, int], cache: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sequential calibration of the chosen plan (OBS with calibration data, sequential > 1):
        later groups' statistics from the model with the earlier groups already compressed; then
        the dense-target re-fit (refit=dense: with calibration data, or data-free on the synthetic
        feeds with refit-synthetic=true)."""
        feeds: Any = None
        if self.refit in ("dense", "residual") and any(k < method.groups[g].n_units for g, k in kept.items()):
            if ctx.calibration is not None and method.criterion == "obs":
                feeds = ctx.calibration
            elif ctx.calibration is None and method.criterion == "obspa" and self.refit_synthetic:
                feeds = self._synthetic(ctx, model, cache)
        dense = model.clone() if feeds is not None else None
        if self.sequential < 2 or ctx.calibration is None or method.criterion != "obs":
            stats: dict[str, Any] = {"calibration_stages": 1} if method.criterion in ("obs", "wanda") else {}
            if dense is not None:
                from spa_compiler.criteria.sequential import mask_plan

                assert method.paths is not None
                mask_plan(model, [method.paths[g] for g in kept], kept)
        else:
            from spa_compiler.criteria.sequential import sequential_refit

            stats = sequential_refit(model, method, kept, ctx.calibration, stages=self.sequential,
                                     seed=ctx.seed, progress=ctx.progress)
        if dense is not None:
            from spa_compiler.criteria.refit import adopt_refit, dense_target_refit

            rs = dense_target_refit(model, dense, feeds, stages=max(self.refit_stages, 1), seed=ctx.seed,
                                    residual=self.refit == "residual", progress=ctx.progress)
            adopt_refit(model, method, kept, rs.pop("refitted", []))
            stats.update(rs)
            if feeds is not ctx.calibration:
                stats["refit_feeds_source"] = "synthetic"
        return stats

    def _graded_families(self, method: PruningMethod, fine: Mapping[str, Sequence[int]],
                         kinds: Mapping[str, str], names: Sequence[str],
                         ) -> dict[str, dict[str, Callable[[float], dict[str, Hashable]]]]:
        """Per uniform family of a kind with 3+ groups, two variants whose share grows or falls
        linearly with graph depth: group g of rank r (0 .. n-1 by the position of its first
        consumer, `Member.node_index`) loses share * (1 + slope * (2r / (n-1) - 1)) of its units, slope +-0.5, capped
        at max-ratio."""
        from spa_compiler.methods.pruning import uniform_kept

        groups = method.groups
        out: dict[str, dict[str, Callable[[float], dict[str, Hashable]]]] = {}
        for kind in names:
            mine = [g for g in groups if kinds.get(g) == kind and g in fine]
            if len(mine) < 3:
                continue
            # depth: where the group's units are first read (its first consumer in graph order)
            pos = {g: min((m.node_index for m in groups[g].members if m.role in ("input", "activation")),
                          default=min((m.node_index for m in groups[g].members), default=0)) for g in mine}
            rank = {g: i for i, g in enumerate(sorted(mine, key=lambda g: (pos[g], g)))}
            last = len(mine) - 1

            def graded(slope: float, rank: dict[str, int] = rank, last: int = last,
                       ) -> Callable[[float], dict[str, Hashable]]:
                def make(share: float) -> dict[str, Hashable]:
                    plan: dict[str, Hashable] = {}
                    for g, grp in groups.items():
                        if g not in rank:
                            plan[g] = grp.n_units
                            continue
                        sh = min(self.max_ratio, max(0.0, share * (1.0 + slope * (2.0 * rank[g] / last - 1.0))))
                        plan[g] = uniform_kept(grp.n_units, fine[g], sh)
                    return plan
                return make

            out[f"every {kind} group"] = {f"every {kind} group, deeper cut more": graded(0.5),
                                           f"every {kind} group, earlier cut more": graded(-0.5)}
        return out

    def search(self, model: ModelIR, ctx: CompileContext, method: PruningMethod, *, uniform: bool,
               cache: dict[str, Any] | None = None) -> PassResult:
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
                                progress=ctx.progress, sample=self.table_sampling)

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
        probe = self._error_probe(model, ctx, method, cache if cache is not None else {})
        site_class = None
        dense = None
        if probe is not None and self.error_classes and not uniform:
            from spa_compiler.methods.base import dense_plan
            from spa_compiler.search.output_error import site_classes

            site_class = site_classes(method)
            dense = dense_plan(method)
        families: dict[str, Callable[[float], dict[str, Hashable]]] | None = None
        variants: dict[str, dict[str, Callable[[float], dict[str, Hashable]]]] | None = None
        if probe is not None and self.uniform_candidates and not uniform:
            from spa_compiler.search.output_error import site_classes

            kinds = site_class if site_class is not None else site_classes(method)
            names = sorted({kinds[g] for g in groups if g in kinds})

            def family(kind: str) -> Callable[[float], dict[str, Hashable]]:
                def make(share: float) -> dict[str, Hashable]:  # one share of `kind`, the rest dense
                    return {g: (k if kinds.get(g) == kind else groups[g].n_units)
                            for g, k in joint_plan(share).items()}
                return make

            families = {f"every {k} group": family(k) for k in names}
            if len(names) > 1:
                families["every group"] = joint_plan
            variants = self._graded_families(method, fine, kinds, names) if self.uniform_graded else None
        settings = LoopSettings(max_iters=self.max_iters, tolerance=self.tolerance, safety=self.safety,
                                joint_max_share=self.max_ratio)
        out = meet_budget(
            options, decode, base_ms=base_ms, budget_ms=float(ctx.budget_ms), dense_now_ms=dense_now,
            table_dense_ms=table.dense_ms, measure=timer, max_total_error=bound * n_groups, settings=settings,
            has_measurements=ctx.latency is not None, joint_plan=None if uniform else joint_plan,
            plan_error=method.plan_error, predict=table.predict_ms, n_sites=n_groups,
            measure_error=probe, site_class=site_class, dense_plan=dense,
            max_output_error=self.max_output_error if self.max_output_error >= 0 else None,
            max_site_fits=self.error_sites if site_class is not None else 0,
            uniform_plans=families, uniform_variants=variants,
        )
        kept = {str(g): int(k) for g, k in out.plan.items()}  # type: ignore[call-overload]
        seq = self._sequential(model, ctx, method, kept, cache)
        # validated by the PassManager (after the pass or at the end, as the user chose), not twice
        stats: dict[str, Any] = method.apply(model, kept, validate=False, progress=ctx.progress)
        stats.update(seq)
        if probe is not None:
            # the search's figure (one-shot re-fit) and the emitted model's (after sequential calibration)
            stats.update(output_error=out.output_error, output_error_final=probe.of_model(model),
                         output_error_measure=probe.describe(), output_error_feeds=probe.source,
                         output_error_plans_measured=probe.calls)
            if out.error_model is not None and out.error_model.weights:
                stats["output_error_class_weights"] = {k: round(v, 4) for k, v in out.error_model.weights.items()}
            if self.max_output_error >= 0:
                stats["max_output_error"] = self.max_output_error
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
        cov_stats, notes = self._coverage(method, ctx)
        stats.update(cov_stats)
        if not out.reached:
            stats["unreachable"] = out.unreachable
            notes.append(
                f"{self.name}: budget {float(ctx.budget_ms):.4g} ms unreachable within mean error {bound:.3g}: "
                f"best reachable {out.measured_ms / scale:.4g} ms ({out.unreachable})"
            )
        if probe is not None and out.output_error is not None:
            pred = [r.get("predicted_output_error") for r in out.rounds if "measured_output_error" in r]
            meas = [r["measured_output_error"] for r in out.rounds if "measured_output_error" in r]
            src = next((r for r in out.rounds if r.get("measured_ms") == out.measured_ms
                        and r.get("measured_output_error") == out.output_error), None)
            origin = ""
            if src is not None:  # which round found the plan kept: the knapsack's or a uniform family's
                stats["chosen_round"] = src["round"]
                stats["chosen_from"] = src.get("family") or "search"
                origin = f" (round {src['round']}, {stats['chosen_from']})"
            notes.append(f"{self.name}: output error ({probe.describe()}, {probe.source}): chosen plan "
                         f"{out.output_error:.4g}{origin}; per round predicted/measured "
                         + ", ".join(f"{p:.3g}/{m:.3g}" if p is not None else f"-/{m:.3g}" for p, m in zip(pred, meas)))
        details = [method.detail(g, k, table.lookup(g, k)) | {"latency_dense_ms": round(table.groups[g].dense_ms, 6)}
                   for g, k in kept.items()]
        details.append({"search_rounds": out.rounds, "search_units": f"latency-table ms (table dense "
                        f"{table.dense_ms:.4g} ms, dense now {dense_now:.4g} ms)",
                        "latency_table": table.provenance.__dict__ | {"kind": table.kind, "dense_ms": table.dense_ms,
                                                                      "methods": sorted(table.methods())}})
        return PassResult(model, modified=stats.get("groups_pruned", 0) > 0, stats=stats, skipped=skipped,
                          details=details, notes=notes)

    def run_pruning(self, model: ModelIR, ctx: CompileContext, *, uniform_search: bool) -> PassResult:
        cache: dict[str, Any] = {}  # the synthetic feeds, made once for the criterion and the probe
        method = self.build_method(model, ctx, cache)
        if not method.groups:
            return PassResult(model, modified=False, stats={"groups": 0}, skipped=method.skipped)
        if ctx.budget_ms is None:
            return self.prune_share(model, ctx, method)
        return self.search(model, ctx, method, uniform=uniform_search, cache=cache)

"""Monarch substitution: dense linear layers replaced by Monarch products where that is measured
faster, and Monarch products a model already holds fused into `MonarchMatMul`.

Before:  Y = MatMul(X, W) / Gemm(X, W, C) with a dense constant W (N, K); or a Monarch-trained
         model's Reshape -> batched MatMul -> Transpose -> batched MatMul -> Reshape chain.
After:   Y = X @ M.T (+ C) with M = P L P R a Monarch matrix (`spa_compiler.monarch.factor`), as
         standard ONNX ops (default; runs everywhere) or one `spa.ops` MonarchMatMul node (when the
         target has the "custom-ops" capability and the runtime_ops op package is importable).

1. Recognition (`recognize=true`): existing Monarch chains are probed (run on identity rows) and,
   when the probe is exactly Monarch in the op's convention, replaced by MonarchMatMul (only when
   the custom op is the emitted form: the standard form of an existing chain is what it already
   is). Lossless: the replacement reproduces the probed matrix to fp32 precision.
2. Substitution: every linear site gets Monarch variants (block counts, ranks) next to dense,
   scored by the relative output error of the plain projection on the layer's inputs (calibration
   feeds; data-free: the Frobenius error). With a latency budget each variant is timed in context
   on the target (`latency.profile.build_table`, sites of one signature together), a variant that
   is not measured faster than dense at its site is dropped (the site stays dense), and the
   measure-and-correct search (`search.loop.meet_budget`) chooses one variant per site. Without a
   budget, `variant=b4r4` (say) substitutes that structure wherever it applies.
   The chosen weights are refined by alternating least squares on ||(W - M) X|| (`refine` sweeps).

Options:
    variant: Without a budget, the structure to apply at every site that takes it ("" : none).
    blocks: Block counts to consider ("" : powers of two up to 64 and the divisors nearest sqrt).
    ranks: Ranks per block pair to consider.
    max_fraction: Largest MAC (and parameter) fraction of a variant relative to dense.
    min_fraction: Smallest MAC fraction of a variant.
    variants: Monarch variants per site at most (spread over the fraction range).
    asymmetric: Also different block counts for the two factors (emitted as standard ONNX).
    include: Only layers whose node name matches this regular expression ("" : all).
    min_elements: Layers with fewer weight elements are left alone.
    emit: auto (custom-op when the target and build allow, else onnx), onnx or custom-op.
    refine: ALS sweeps on the chosen layers with calibration data (0: the plain projection).
    data: auto (calibration when given, else none), calibration, or none (Frobenius error).
    recognize: Fuse existing Monarch chains into MonarchMatMul (custom-op form only).
    substitute: Substitute dense layers (false: recognition only).
    max_error: Mean relative error bound of the search (negative: the context's or 0.35).
    max_iters: Measure-and-correct rounds of the search.
    tolerance: Accept a measured latency within this fraction under the budget.
    safety: Aim this fraction under the budget.

Requirements: a latency model when a budget is given; static shapes for timing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Hashable
from typing import Any, ClassVar

from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.methods.monarch import DENSE, MonarchMethod
from spa_compiler.monarch import emit as em
from spa_compiler.monarch import factor, recognize
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.requirements import Requirement

logger = logging.getLogger(__name__)

DEFAULT_MAX_ERROR = 0.35


def choose_form(emit: str, target: str) -> tuple[str, str]:
    """(form, why) for an `emit` option on `target`: custom-op needs the target's "custom-ops"
    capability and the op package; auto falls back to onnx with the reason."""
    from spa_compiler.targets import get_target

    if emit == "onnx":
        return "onnx", ""
    ok, why = em.custom_op_available()
    if "custom-ops" not in get_target(target).capabilities:
        ok, why = False, f"target {target} has no custom-ops capability"
    if emit == "custom-op":
        return "custom-op", "" if ok else why
    return ("custom-op", "") if ok else ("onnx", why)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """"4,8,16" -> (4, 8, 16); PreconditionError for anything else."""
    if not text.strip():
        return ()
    try:
        out = tuple(int(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError as e:
        raise PreconditionError(f"substitute-monarch: {what} must be integers joined by ',', not {text!r}") from e
    if any(v < 1 for v in out):
        raise PreconditionError(f"substitute-monarch: {what} must be >= 1, got {text!r}")
    return out


@dataclasses.dataclass(frozen=True)
class SubstituteMonarchPass(Pass):
    """Replace linear layers by Monarch products where measured faster; fuse existing Monarch chains.

    Options:
        variant: Without a budget, the structure to apply at every site ("": none), e.g. b4r4.
        blocks: Block counts to consider, e.g. "4,8,16" ("": automatic).
        ranks: Ranks per block pair to consider, e.g. "1,2,4,8,16,32".
        max_fraction: Largest MAC fraction of a variant relative to dense.
        min_fraction: Smallest MAC fraction (sparser structures lose too much to be worth timing).
        variants: Monarch variants per site at most.
        asymmetric: Also different block counts for the two factors (standard ONNX only).
        include: Only layers whose node name matches this regular expression.
        min_elements: Layers with fewer weight elements are left alone.
        emit: auto, onnx or custom-op.
        refine: ALS sweeps on the chosen layers with calibration data (0: plain projection).
        data: auto, calibration or none.
        recognize: Fuse existing Monarch chains into MonarchMatMul.
        substitute: Substitute dense layers.
        max_error: Mean relative error bound of the search (negative: the context's or 0.35).
        max_iters: Measure-and-correct rounds.
        tolerance: Accept a measured latency within this fraction under the budget.
        safety: Aim this fraction under the budget.
    """

    name: ClassVar[str] = "substitute-monarch"

    variant: str = ""
    blocks: str = ""
    ranks: str = "1,2,4,8,16,32"
    max_fraction: float = 0.5
    min_fraction: float = 0.04
    variants: int = 6
    asymmetric: bool = False
    include: str = ""
    min_elements: int = 4096
    emit: str = "auto"
    refine: int = 8
    data: str = "auto"
    recognize: bool = True
    substitute: bool = True
    max_error: float = -1.0
    max_iters: int = 8
    tolerance: float = 0.05
    safety: float = 0.015

    def requirements(self) -> frozenset[Requirement]:
        req = {Requirement.CALIBRATION} if self.data == "calibration" else set()
        return frozenset(req)

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        del model
        n = self.name
        if self.emit not in ("auto", "onnx", "custom-op"):
            raise PreconditionError(f"{n}: emit must be auto, onnx or custom-op, not {self.emit!r}")
        if self.data not in ("auto", "calibration", "none"):
            raise PreconditionError(f"{n}: data must be auto, calibration or none, not {self.data!r}")
        if self.variant:
            try:
                factor.parse_key(self.variant)
            except ValueError as e:
                raise PreconditionError(f"{n}: {e}") from e
        parse_int_list(self.blocks, "blocks")
        parse_int_list(self.ranks, "ranks")
        if not 0.0 <= self.min_fraction < self.max_fraction <= 1.0 or self.variants < 1 or self.refine < 0 or self.max_iters < 1:
            raise PreconditionError(f"{n}: max-fraction in (0, 1], variants >= 1, refine >= 0, max-iters >= 1")
        if not 0.0 <= self.safety < self.tolerance:
            raise PreconditionError(f"{n}: safety must be in [0, tolerance)")
        if self.emit == "custom-op":
            form, why = choose_form(self.emit, ctx.target)
            if why:
                raise PreconditionError(f"{n}: emit=custom-op is not possible: {why}", hint="use emit=auto or emit=onnx")
        if ctx.budget_ms is not None and self.substitute and ctx.latency is None and ctx.latency_table is None:
            raise PreconditionError(f"{n}: a latency budget needs a latency model",
                                    hint="allow measurement (drop --no-measure) or pass --latency-table")

    # ------------------------------------------------------------------ run
    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        form, why = choose_form(self.emit, ctx.target)
        notes = [f"{self.name}: emitting standard ONNX ({why})"] if why and self.emit == "auto" else []
        stats: dict[str, Any] = {"form": form}
        skipped: Counter[str] = Counter()
        details: list[dict[str, Any]] = []
        if self.recognize:
            fused, rskip, rdetails = self._recognize(model, form)
            stats["chains_fused"] = fused
            skipped.update({f"chain:{k}": v for k, v in rskip.items()})
            details += rdetails
        modified = bool(stats.get("chains_fused"))
        if self.substitute and (ctx.budget_ms is not None or self.variant):
            method = self.build_method(model, ctx, form)
            skipped.update(method.skipped)
            if not method.linear:
                stats["sites"] = 0
            elif ctx.budget_ms is None:
                res = self._fixed(model, method)
                stats.update(res.stats)
                details += res.details
                skipped.update(res.skipped)
                modified |= res.modified
            else:
                res = self._search(model, ctx, method)
                stats.update(res.stats)
                details += res.details
                notes += res.notes
                skipped.update(res.skipped)
                modified |= res.modified
        elif self.substitute:
            notes.append(f"{self.name}: no latency budget and no variant given: no layer substituted")
        return PassResult(model, modified=modified, stats=stats, skipped=dict(skipped), details=details, notes=notes)

    def build_method(self, model: ModelIR, ctx: CompileContext, form: str) -> MonarchMethod:
        use_data = self.data == "calibration" or (self.data == "auto" and ctx.calibration is not None)
        blocks = parse_int_list(self.blocks, "blocks")
        ranks = parse_int_list(self.ranks, "ranks") or (1,)
        if self.variant:
            bi, bo, r = factor.parse_key(self.variant)
            blocks, ranks = (bi,), (r,)
        method = MonarchMethod.build(
            model, blocks=blocks, ranks=ranks, max_fraction=1.0 if self.variant else self.max_fraction,
            min_fraction=0.0 if self.variant else self.min_fraction,
            count=self.variants, asymmetric=self.asymmetric or (bool(self.variant) and bi != bo),
            include=self.include, min_elements=self.min_elements,
            feeds=ctx.calibration if use_data else None, form=form, refine=self.refine if use_data else 0,
            progress=ctx.progress,
        )
        return method

    def _recognize(self, model: ModelIR, form: str) -> tuple[int, Counter[str], list[dict[str, Any]]]:
        chains, skipped = recognize.find_chains(model)
        details: list[dict[str, Any]] = []
        fused = 0
        for chain in chains:
            m = recognize.probe(model, chain)
            if isinstance(m, str):
                skipped[m] += 1
                continue
            got = recognize.structure_of(chain, m)
            if isinstance(got, str):
                skipped[got.split(":")[0]] += 1
                continue
            shape, rf, lf = got
            if form != "custom-op" or not shape.op_compatible:
                skipped["recognised-kept-as-is" if form != "custom-op" else "recognised-blocks-differ"] += 1
                details.append({"chain": chain.y.name, "recognised": shape.key, "fused": False})
                continue
            y = chain.y
            prod = model.producer(y)
            assert prod is not None
            prod.outputs.clear()
            em.emit_between(model, chain.x, y, rf, lf, form="custom-op", dtype=chain.w1.dtype, prefix=y.name)
            fused += 1
            details.append({"chain": y.name, "recognised": shape.key, "fused": True})
        if fused:
            model.cleanup()
        return fused, skipped, details

    def _fixed(self, model: ModelIR, method: MonarchMethod) -> PassResult:
        plan = {sid: self.variant for sid in method.linear if any(v.key == self.variant for v in method.shapes[sid])}
        missing = len(method.linear) - len(plan)
        stats = method.apply(model, plan)
        details = [method.detail(s, k) for s, k in plan.items()]
        skipped = {"variant-not-valid-here": missing} if missing else {}
        stats["mean_error"] = sum(method.error(s, k) for s, k in plan.items()) / max(1, len(plan))
        return PassResult(model, modified=bool(plan), stats=stats, skipped=skipped, details=details)

    def _bound(self, ctx: CompileContext) -> float:
        if self.max_error >= 0:
            return self.max_error
        return ctx.max_error if ctx.max_error is not None else DEFAULT_MAX_ERROR

    def _search(self, model: ModelIR, ctx: CompileContext, method: MonarchMethod) -> PassResult:
        from spa_compiler.latency.profile import build_table
        from spa_compiler.search.knapsack import GroupOptions, Level, SearchResult
        from spa_compiler.search.loop import CandidateTimer, LoopSettings, meet_budget

        assert ctx.budget_ms is not None
        table = ctx.latency_table
        if table is None or not all(sid in table.groups for sid in method.linear):
            table = build_table(model, method, ctx.latency, ctx.feeds or {}, input_shapes=ctx.input_shapes,
                                progress=ctx.progress)
        skipped: Counter[str] = Counter()
        options = []
        for site in method.sites():
            dense_ms = table.lookup(site.id, DENSE)
            levels = [Level(DENSE, dense_ms, 0.0)]
            for v in method.variants(site):
                if v.dense:
                    continue
                ms = table.lookup(site.id, v.key)
                if ms < dense_ms:  # only a variant measured faster than dense at this site
                    levels.append(Level(v.key, ms, method.error(site, v.key)))
            if len(levels) == 1:
                skipped["no-variant-measured-faster"] += 1
            options.append(GroupOptions(site.id, levels))
        n_sites = len(options)
        base_ms = table.base_ms + sum(e.dense_ms for gid, e in table.groups.items() if gid not in method.linear)

        def decode(res: SearchResult) -> dict[str, Hashable]:
            return {str(g): k for g, k in res.levels.items()}

        def predict(plan: Any) -> float:
            return base_ms + sum(table.lookup(s, k) for s, k in plan.items())

        dense_now = float(ctx.dense_ms or table.dense_ms)
        timer = CandidateTimer(model, method, ctx.latency, ctx.feeds or {}, table.dense_ms)
        bound = self._bound(ctx)
        out = meet_budget(
            options, decode, base_ms=base_ms, budget_ms=float(ctx.budget_ms), dense_now_ms=dense_now,
            table_dense_ms=table.dense_ms, measure=timer, max_total_error=bound * n_sites,
            settings=LoopSettings(max_iters=self.max_iters, tolerance=self.tolerance, safety=self.safety),
            has_measurements=ctx.latency is not None, n_sites=n_sites, predict=predict,
        )
        plan = {s: k for s, k in out.plan.items() if k != DENSE}
        stats: dict[str, Any] = method.apply(model, plan) if plan else {"layers_substituted": 0}
        scale = out.scale
        stats.update(
            mode="latency-search", sites=n_sites, budget_ms=float(ctx.budget_ms),
            measured_ms=out.measured_ms / scale, dense_ms=dense_now, table_dense_ms=table.dense_ms,
            mean_error=out.error / max(1, n_sites), max_mean_error=bound, budget_met=out.reached,
            search_rounds=len(out.rounds),
        )
        notes = []
        if not out.reached:
            stats["unreachable"] = out.unreachable
            notes.append(f"{self.name}: budget {float(ctx.budget_ms):.4g} ms unreachable with Monarch variants within "
                         f"mean error {bound:.3g}: best {out.measured_ms / scale:.4g} ms ({out.unreachable})")
        details: list[dict[str, Any]] = [method.detail(s, k, table.lookup(s, k)) for s, k in out.plan.items()]
        details.append({"search_rounds": out.rounds, "latency_table": table.provenance.__dict__ | {"kind": table.kind}})
        return PassResult(model, modified=bool(plan), stats=stats, skipped=dict(skipped), details=details, notes=notes)

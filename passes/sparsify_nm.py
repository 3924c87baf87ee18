"""N:M sparsification (2:4, 4:8): keep n of every m weights along each layer's reduction axis, where
the target runs the sparse layer faster.

Before:  Conv / Gemm / MatMul nodes with constant, unshared float weights (`methods.nm`).
After:   each chosen weight keeps n of every m consecutive weights along its reduction axis (K of a
         MatMul/Gemm on whichever side the weight is, honouring transB; input channels at every
         kernel position of a Conv), picked by magnitude, Wanda or SparseGPT (`criteria.nm`;
         SparseGPT updates the surviving weights to absorb the error). Output forms:
         `form=dense` (default): dense initializers carrying the exact pattern, for TensorRT's
         sparse-weights builder flag; `form=op`: `NMSparseMatMul` (domain spa.ops) with compressed
         values + metadata where the target has our custom-op kernels and the op package is
         installed (2:4 MatMul/Gemm only; other sites keep the dense form, with the reason).
         Layers that would not gain stay plain dense.

Which sites take a sparse variant (`keep`):
    measured  (default) every variant is timed in context on the target (`latency.profile`, in
              alternation with the dense model) and kept only where it measured at least
              `min-gain` of the whole model faster; with a latency budget, the budget search
              (`search.loop`) chooses among the measured variants by error. Where the target cannot
              be timed here (an analytic provider), the labelled prior applies instead.
    prior     TensorRT's rule of thumb: sparse only where input and output channels are both at
              least `min-channels` (256), the first pattern listed.
    all       every eligible site at the first pattern listed (quality studies).

Calibration (`--calib`) with Wanda or SparseGPT is sequential by default (`sequential`, stages): the
chosen sites are re-solved stage by stage in graph order, each stage calibrated on the model with the
earlier stages already sparse (`NMMethod.solve_sequential`, the stages of `criteria.sequential`);
with keep=all or the prior no one-shot pass is made first. sequential=0 is one-shot.

The report has one record per site (PassResult.details): applied or not, why, measured gain,
error. Masked dense weights run at dense speed on ORT CPU/CUDA (their kernels do not skip zeros),
so with `keep=measured` on those targets nothing is applied unless the op form is measured faster.

Requirements: static shapes when timing or when Wanda/SparseGPT run without calibration (synthetic
inputs); calibration data is used when given (`--calib`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable
from typing import Any, ClassVar

import numpy as np

from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.methods.nm import NM_CRITERIA, NMMethod, resolve_criterion
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.requirements import Requirement

logger = logging.getLogger(__name__)

DEFAULT_MAX_ERROR = 0.35


@dataclasses.dataclass(frozen=True)
class SparsifyNMPass(Pass):
    """Make weights N:M sparse (2:4 by default) where the target measures it faster.

    Options:
        patterns: N:M patterns offered per site (keep n of every m), e.g. 2:4 or 2:4,4:8.
        criterion: auto (sparsegpt with --calib, else magnitude), magnitude, wanda or sparsegpt.
        keep: measured (timed on the target; the prior where it cannot be timed), prior
            (TensorRT's rule: C_in and C_out >= min-channels) or all (every eligible site).
        min_gain: measured: keep a variant only if it saves at least this share of the model's latency
            (per layer kind in the table, then confirmed by timing the whole model against dense).
        confirm_rounds: measured: rounds of timing dense, candidate, dense again; the candidate must
            beat both dense copies by min-gain in every round.
        min_channels: The prior's channel threshold.
        min_elements: Weights with fewer elements are left alone.
        form: dense (pattern in dense initializers) or op (NMSparseMatMul where the target has the kernel).
        blocksize: SparseGPT's column block.
        damp: SparseGPT's relative Hessian damping.
        max_error: With a budget: mean relative layer error bound (negative: the context's or 0.35).
        synthetic_feeds: Random input feeds for data-free Wanda/SparseGPT.
        synthetic_tokens: For language models, at least this many synthetic tokens in all.
        lm_rounds: For language models, rounds of re-sampling the random tokens from the model itself.
        moments: Data-free: auto (BatchNorm closed form where it applies) or response (random inputs).
        sequential: Wanda/SparseGPT with calibration: stages of sequential calibration of the chosen
            sites (each stage's statistics from the model with the earlier stages already sparse,
            SparseGPT's layer order; sites reading one input share a stage); 0 or 1: one-shot (every
            layer's statistics from the dense model).
    """

    name: ClassVar[str] = "sparsify-nm"

    patterns: tuple[str, ...] = ("2:4",)
    criterion: str = "auto"
    keep: str = "measured"
    min_gain: float = 0.01
    confirm_rounds: int = 3
    min_channels: int = 256
    min_elements: int = 0
    form: str = "dense"
    blocksize: int = 128
    damp: float = 0.01
    max_error: float = -1.0
    synthetic_feeds: int = 8
    synthetic_tokens: int = 4096
    lm_rounds: int = 4
    moments: str = "auto"
    sequential: int = 8

    def requirements(self) -> frozenset[Requirement]:
        # timing needs fixed shapes; so do synthetic feeds (data-free Wanda/SparseGPT), which depend
        # on whether calibration is given: checked in check_preconditions
        return frozenset({Requirement.STATIC_SHAPES}) if self.keep == "measured" else frozenset()

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        n = self.name
        criterion = self.criterion if self.criterion in NM_CRITERIA else "auto"
        if ctx.calibration is None and criterion not in ("auto", "magnitude"):
            missing = sorted(set(model.symbolic_inputs()) - set(ctx.input_shapes))
            if missing:  # the data-free statistics run the model on synthetic feeds of fixed shapes
                from spa_compiler.errors import MissingRequirementError
                from spa_compiler.requirements import Requirement as R

                raise MissingRequirementError(
                    f"pass {n!r} needs {R.STATIC_SHAPES.description} for data-free {criterion} "
                    f"(symbolic: {', '.join(missing)})", hint=f"pass {R.STATIC_SHAPES.flag} or --calib")
        from spa_compiler.criteria.nm import parse_pattern

        if not self.patterns:
            raise PreconditionError(f"{n}: give at least one pattern, e.g. patterns=2:4")
        for p in self.patterns:
            try:
                parse_pattern(p)
            except ValueError as e:
                raise PreconditionError(f"{n}: {e}") from e
        if self.criterion not in ("auto", *NM_CRITERIA):
            raise PreconditionError(f"{n}: criterion must be auto or one of {NM_CRITERIA}, not {self.criterion!r}")
        if self.keep not in ("measured", "prior", "all"):
            raise PreconditionError(f"{n}: keep must be measured, prior or all, not {self.keep!r}")
        if self.form not in ("dense", "op"):
            raise PreconditionError(f"{n}: form must be dense or op, not {self.form!r}")
        if self.moments not in ("auto", "response"):
            raise PreconditionError(f"{n}: moments must be auto or response, not {self.moments!r}")
        if self.blocksize < 1 or self.damp < 0 or self.min_channels < 0 or not 0 <= self.min_gain < 1:
            raise PreconditionError(f"{n}: blocksize >= 1, damp >= 0, min-channels >= 0, min-gain in [0, 1)")
        if self.sequential < 0:
            raise PreconditionError(f"{n}: sequential must be >= 0 (stages; 0 or 1: one-shot)")

    # ------------------------------------------------------------------ options -> method
    def _synthetic(self, ctx: CompileContext, model: ModelIR) -> list[dict[str, np.ndarray]]:
        from spa_compiler.synthetic import synthetic_feeds

        return synthetic_feeds(model, ctx.input_shapes, count=self.synthetic_feeds, seed=ctx.seed,
                               min_tokens=self.synthetic_tokens, lm_rounds=self.lm_rounds)

    def _is_sequential(self, ctx: CompileContext) -> bool:
        """Sequential calibration applies: stages >= 2, calibration data, a data-dependent mask."""
        criterion = resolve_criterion(self.criterion, have_calibration=ctx.calibration is not None)
        return self.sequential >= 2 and ctx.calibration is not None and criterion in ("wanda", "sparsegpt")

    def build_method(self, model: ModelIR, ctx: CompileContext, *, solve: bool = True) -> NMMethod:
        criterion = resolve_criterion(self.criterion, have_calibration=ctx.calibration is not None)
        return NMMethod.build(
            model, patterns=self.patterns, criterion=criterion, calibration=ctx.calibration,
            synthetic=lambda: self._synthetic(ctx, model), closed_form=self.moments == "auto",
            blocksize=self.blocksize, damp=self.damp, min_elements=self.min_elements, seed=ctx.seed,
            progress=ctx.progress, solve=solve,
        )

    def _measurable(self, ctx: CompileContext) -> tuple[bool, str]:
        if self.keep != "measured":
            return False, f"keep={self.keep}"
        if ctx.latency_table is not None and _has_nm_entries(ctx.latency_table):
            return True, ""
        if ctx.latency is None:
            return False, "no latency provider (--no-measure)"
        if getattr(ctx.latency, "kind", "") == "analytic":
            return False, f"target {ctx.target} cannot be timed here (analytic model)"
        return True, ""

    # ------------------------------------------------------------------ run
    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        measurable, why_not = self._measurable(ctx)
        sequential = self._is_sequential(ctx)
        # the one-shot solve is needed where errors choose (measured gains, a budget); with keep=all
        # or the prior and sequential calibration, only the chosen sites are solved, stage by stage
        method = self.build_method(model, ctx, solve=measurable or not sequential)
        sites = method.sites()
        if not sites:
            return PassResult(model, modified=False, stats={"sites": 0, "criterion": method.criterion},
                              skipped=method.skipped)
        first = {s.id: method.patterns[s.id][0] for s in sites}
        decisions: dict[str, dict[str, Any]] = {}
        stats: dict[str, Any] = {"criterion": method.criterion, "error_kind": method.error_kind,
                                 "sites": len(sites)}
        notes: list[str] = []
        extra_details: list[dict[str, Any]] = []
        if self.keep == "all":
            for s in sites:
                decisions[s.id] = {"variant": first[s.id], "why": "keep=all"}
            stats["decision"] = "all"
        elif not measurable:
            for s in sites:
                info = s.info
                ok = method.prior(s.id, self.min_channels)
                rule = f"C_in {info['channels_in']}, C_out {info['channels_out']} vs {self.min_channels}"
                decisions[s.id] = {"variant": first[s.id] if ok else "dense",
                                   "why": f"prior (TensorRT rule of thumb): {rule}" + ("" if ok else ": too narrow")}
            stats["decision"] = "prior"
            if self.keep == "measured":
                notes.append(f"{self.name}: {why_not}; sparse layers chosen by TensorRT's rule of thumb "
                             f"(C_in and C_out >= {self.min_channels}), not measured")
        else:
            table = self._table(model, ctx, method)
            if ctx.budget_ms is not None:
                plan, search_stats, search_details = self._search(model, ctx, method, table)
                stats.update(search_stats)
                extra_details.extend(search_details)
                for s in sites:
                    v = str(plan.get(s.id, "dense"))
                    decisions[s.id] = {"variant": v, "why": "budget search" if v != "dense" else
                                       "budget search kept it dense"}
            else:
                sig_sizes = _signature_sizes(method)
                for s in sites:
                    decisions[s.id] = self._measured_choice(method, table, s.id, sig_sizes)
                self._confirm(model, ctx, method, decisions, stats)
            stats["decision"] = "measured"
            stats["table_dense_ms"] = table.dense_ms
            for s in sites:
                entry = table.groups.get(s.id)
                if entry is not None:
                    dense = entry.variants["dense"]  # type: ignore[union-attr]
                    decisions[s.id]["measured_gain_ms"] = {
                        k: round(dense - t, 6) for k, t in entry.variants.items() if k != "dense"}  # type: ignore[union-attr]
        plan = {sid: d["variant"] for sid, d in decisions.items() if d["variant"] != "dense"}
        if sequential and plan:
            assert ctx.calibration is not None
            stats.update(method.solve_sequential(plan, ctx.calibration, stages=self.sequential, seed=ctx.seed,
                                                 progress=ctx.progress))
        else:
            stats["calibration_stages"] = 1 if method.error_kind == "output" else 0
        apply_stats = method.apply(model, plan)
        stats.update(apply_stats)
        if self.form == "op" and plan:
            from spa_compiler.methods.nm_emit import emit_ops

            emitted, reasons = emit_ops(model, method, plan, ctx.target)
            stats["layers_op_form"] = len(emitted)
            for sid in emitted:
                decisions[sid]["form"] = "NMSparseMatMul"
            for sid, why in reasons.items():
                decisions[sid]["form"] = f"dense pattern ({why})"
                method.skipped[f"op-form:{why}"] = method.skipped.get(f"op-form:{why}", 0) + 1
        details = []
        for s in sites:
            d = decisions[s.id]
            v = d["variant"]
            rec: dict[str, Any] = {"site": s.id, "node": s.label, "op": s.info["op"], "shape": s.info["shape"],
                                   "applied": v != "dense", "variant": v, "why": d["why"],
                                   "moments": method.moments.get(s.id)}
            rec["error"] = {p: float(f"{method.error(s, p):.6g}") for p in method.patterns[s.id]
                            if (s.id, p) in method.results}
            if "measured_gain_ms" in d:
                rec["measured_gain_ms"] = d["measured_gain_ms"]
            if "form" in d:
                rec["form"] = d["form"]
            elif v != "dense":
                rec["form"] = "dense pattern"
            details.append(rec)
        errs = [method.error(s, decisions[s.id]["variant"]) for s in sites if decisions[s.id]["variant"] != "dense"]
        stats["mean_error_applied"] = float(np.mean(errs)) if errs else 0.0
        logger.info("%s: %d of %d sites sparsified (%s, %s)", self.name, len(plan), len(sites),
                    method.criterion, stats["decision"])
        return PassResult(model, modified=bool(plan), stats=stats, skipped=method.skipped,
                          details=details + extra_details, notes=notes)

    # ------------------------------------------------------------------ measured
    def _table(self, model: ModelIR, ctx: CompileContext, method: NMMethod) -> Any:
        from spa_compiler.latency.profile import build_table

        table = ctx.latency_table
        if table is not None and _has_nm_entries(table):
            missing = [s.id for s in method.sites() if s.id not in table.groups]
            if not missing:
                return table
            logger.info("%s: the latency table lacks %d nm sites; profiling", self.name, len(missing))
        return build_table(model, method, ctx.latency, ctx.feeds or {}, input_shapes=ctx.input_shapes,
                           progress=ctx.progress)

    def _measured_choice(self, method: NMMethod, table: Any, sid: str, sig_sizes: dict[str, int]) -> dict[str, Any]:
        entry = table.groups.get(sid)
        if entry is None:
            return {"variant": "dense", "why": "not in the latency table"}
        dense = float(entry.variants["dense"])
        # the signature's sites share the saving: together they must save min_gain of the model
        best: tuple[float, str] | None = None
        gains = []
        for p in method.patterns[sid]:
            t = entry.variants.get(p)
            if t is None:
                continue
            gain = dense - float(t)
            gains.append(f"{p} {gain / table.dense_ms:+.2%}")
            if gain >= self.min_gain * table.dense_ms / max(1, sig_sizes.get(sid, 1)):
                err = method.error(sid, p)
                if best is None or err < best[0]:
                    best = (err, p)
        if best is None:
            return {"variant": "dense",
                    "why": f"not measured faster on the target (gain of the model: {', '.join(gains) or 'none'}; "
                           f"needs {self.min_gain:.1%})"}
        return {"variant": best[1], "why": f"measured faster ({', '.join(gains)} of the model)"}

    def _confirm(self, model: ModelIR, ctx: CompileContext, method: NMMethod,
                 decisions: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        """Time the model with every kept variant against dense (in alternation); when the whole
        does not gain `min_gain`, the per-layer gains were timing noise: everything stays dense."""
        plan = {sid: d["variant"] for sid, d in decisions.items() if d["variant"] != "dense"}
        if not plan or ctx.latency is None:
            return
        clone = model.clone()
        method.apply(clone, plan, exact=False, validate=False)
        # the dense model twice: the candidate must beat both copies, every round (a null measurement
        # of the noise; under load one paired timing of masked dense weights "gained" 3% on ORT CPU)
        ratios = []
        for _ in range(max(1, self.confirm_rounds)):
            t_dense, t_cand, t_dense2 = ctx.latency.time_many([model, clone, model.clone()], ctx.feeds or {})
            ratios.append(t_cand.ms / max(t_dense.ms, t_dense2.ms))
        ratio = max(ratios)
        stats["confirmed_ratio"] = round(ratio, 4)
        stats["confirm_ratios"] = [round(r, 4) for r in ratios]
        if 1.0 - ratio >= self.min_gain:
            return
        for sid in plan:
            decisions[sid]["variant"] = "dense"
            decisions[sid]["why"] += (f"; not confirmed: the model with all {len(plan)} kept layers measured "
                                      f"{ratio:.3f}x of the slower dense copy in the worst of "
                                      f"{len(ratios)} rounds (needs <= {1 - self.min_gain:.3f}x)")

    def _search(self, model: ModelIR, ctx: CompileContext, method: NMMethod,
                table: Any) -> tuple[dict[str, Hashable], dict[str, Any], list[dict[str, Any]]]:
        from spa_compiler.search.knapsack import GroupOptions, Level
        from spa_compiler.search.loop import CandidateTimer, LoopSettings, meet_budget, plan_of

        assert ctx.budget_ms is not None
        sites = [s for s in method.sites() if s.id in table.groups]
        bound = self.max_error if self.max_error >= 0 else (ctx.max_error if ctx.max_error is not None
                                                            else DEFAULT_MAX_ERROR)
        options = [GroupOptions(s.id, [Level(v.key, table.lookup(s.id, v.key), method.error(s, v.key))
                                       for v in method.variants(s)]) for s in sites]
        base_ms = table.base_ms + sum(g.dense_ms for gid, g in table.groups.items()
                                      if gid not in {s.id for s in sites})
        dense_now = float(ctx.dense_ms or table.dense_ms)
        timer = CandidateTimer(model, method, ctx.latency, ctx.feeds or {}, table.dense_ms)
        out = meet_budget(options, plan_of, base_ms=base_ms, budget_ms=float(ctx.budget_ms),
                          dense_now_ms=dense_now, table_dense_ms=table.dense_ms, measure=timer,
                          max_total_error=bound * max(1, len(sites)), settings=LoopSettings(),
                          has_measurements=ctx.latency is not None and getattr(ctx.latency, "kind", "") != "analytic",
                          n_sites=len(sites))
        stats = {"mode": "latency-search", "budget_ms": float(ctx.budget_ms), "budget_met": out.reached,
                 "measured_ms": out.measured_ms / out.scale, "search_rounds": len(out.rounds)}
        if not out.reached:
            stats["unreachable"] = out.unreachable
        return dict(out.plan), stats, [{"search_rounds": out.rounds}]


def _has_nm_entries(table: Any) -> bool:
    from spa_compiler.latency.table import SiteLatency

    return any(isinstance(g, SiteLatency) and g.method == NMMethod.name for g in table.groups.values())


def _signature_sizes(method: NMMethod) -> dict[str, int]:
    """Per site, how many sites share its signature (profiled together, the saving shared)."""
    sites = method.sites()
    sigs = {s.id: method.signature(s) for s in sites}
    count: dict[Any, int] = {}
    for sig in sigs.values():
        count[sig] = count.get(sig, 0) + 1
    return {sid: count[sig] for sid, sig in sigs.items()}

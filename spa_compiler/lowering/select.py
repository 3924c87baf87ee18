"""Choosing a lowering: every rewrite checked numerically, then kept only where it times faster.

1. Each family the target allows is applied alone to the dense model. A family that fuses nothing
   is "not applicable"; one whose outputs differ from the unlowered model's beyond tolerance on
   random feeds (fp32: relative L2 error <= 1e-4 on the CPU provider; fp16 on the target device:
   within 2e-2 or twice the plain fp16 conversion's own error) is dropped, with the error.
2. The dense model is timed unlowered, with every passing family, and with every passing family
   but one, all in one alternation (so machine load cancels). A family is kept when leaving it out
   is slower than keeping it (by more than the noise margin); the kept set is then timed against
   the unlowered model again and used only if it is faster. On ORT CPU a family can make a model
   slower (ALGORITHMS.md §7: BERT-style encoders 13-20% slower with all of ORT's fusions), so
   nothing is assumed.
3. Without a device to time on (analytic latencies), nothing is chosen by measurement: `auto`
   applies no graph rewrite (the precision still applies) and says so; `all` applies every family
   that passes the check.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from spa_compiler.lowering.core import TARGET_FAMILIES, Lowering, lower

logger = logging.getLogger(__name__)

FP32_TOL = 1e-4
FP16_TOL = 2e-2
#: A family must save more than this share of the time to be kept (timing noise).
MARGIN = 0.01

MODES = ("auto", "none", "all")


def relative_error(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Largest relative L2 error over outputs (float outputs; others must match exactly)."""
    worst = 0.0
    for a, b in zip(got, ref, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return float("inf")
        if not np.issubdtype(b.dtype, np.floating):
            if not np.array_equal(a, b):
                return float("inf")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.all(np.isfinite(a64)) and np.all(np.isfinite(b64)):
            return float("inf")
        den = max(float(np.linalg.norm(b64)), 1e-12)
        worst = max(worst, float(np.linalg.norm(a64 - b64)) / den)
    return worst


def _run_cpu(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from spa_compiler.ort import make_session

    sess = make_session(model, optimize=False)
    return [np.asarray(x) for x in sess.run(None, dict(feeds))]


def _run_cuda(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from spa_compiler.latency.ort_cuda import make_cuda_session

    return [np.asarray(x) for x in make_cuda_session(model).run(None, dict(feeds))]


@dataclasses.dataclass
class Check:
    ok: bool
    error: float
    tolerance: float
    where: str
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {"ok": self.ok, "rel_error": _round(self.error), "tolerance": self.tolerance, "on": self.where}
        if self.why:
            d["why"] = self.why
        return d


def _round(x: float) -> float | str:
    return "inf" if not np.isfinite(x) else float(f"{x:.3g}")


def check(
    lowered: onnx.ModelProto,
    reference: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str,
    device: str,
    ref_outputs: list[list[np.ndarray]] | None = None,
    fp16_plain: onnx.ModelProto | None = None,
) -> Check:
    """Numerical check of `lowered` against the unlowered `reference` (fp32) on `feeds`."""
    try:
        refs = ref_outputs or [_run_cpu(reference, f) for f in feeds]
        if precision == "fp32":
            err = max(relative_error(_run_cpu(lowered, f), r) for f, r in zip(feeds, refs, strict=True))
            return Check(err <= FP32_TOL, err, FP32_TOL, "CPUExecutionProvider fp32",
                         "" if err <= FP32_TOL else "outputs differ from the unlowered model")
        if device != "cuda":
            return Check(True, float("nan"), FP16_TOL, "not run",
                         "fp16 needs the target GPU to check; the fp32 graph rewrites were checked")
        err = max(relative_error(_run_cuda(lowered, f), r) for f, r in zip(feeds, refs, strict=True))
        tol = FP16_TOL
        if fp16_plain is not None:
            plain = max(relative_error(_run_cuda(fp16_plain, f), r) for f, r in zip(feeds, refs, strict=True))
            tol = max(FP16_TOL, 2.0 * plain)
        return Check(err <= tol, err, tol, "CUDAExecutionProvider fp16",
                     "" if err <= tol else "fp16 outputs differ from the fp32 model beyond tolerance")
    except Exception as e:  # a rewrite ORT cannot run is a failed check, with ORT's words
        return Check(False, float("inf"), FP32_TOL if precision == "fp32" else FP16_TOL, "ORT",
                     f"did not run: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


@dataclasses.dataclass
class Decision:
    """What lowering was tried and chosen for one compile (the report's `lowering` section)."""

    mode: str
    lowering: Lowering
    tried: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "chosen": self.lowering.to_json(), "describe": self.lowering.describe(),
                "tried": self.tried, "timings": self.timings, "notes": self.notes}


def choose(
    model: onnx.ModelProto,
    *,
    target: str,
    precision: str,
    fp16_io: bool,
    mode: str,
    input_shapes: Mapping[str, Sequence[int]],
    feeds: Mapping[str, np.ndarray],
    provider: Any = None,
    check_seeds: int = 2,
    seed: int = 0,
    check_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Decision:
    """Decide the lowering of `model` (the dense model as given) for `target`.

    Args:
        provider: A latency provider that times models exactly as given (no conversion of its
            own); None or analytic: nothing is chosen by measurement.
        mode: auto (measured), none (precision only), all (every family that passes the check).
        check_shapes: Input shapes for the numerical check (default: `input_shapes`); the
            rewrites keep symbolic shapes, so a large model can be checked at a smaller size.
    """
    base = Lowering(precision=precision, fp16_io=fp16_io)
    if mode == "none":
        return Decision(mode, base, notes=["lowering off (--lower none): the precision alone is applied"])
    families = TARGET_FAMILIES.get(target, ())
    if not families:
        return Decision(mode, base, notes=[f"target {target}: no graph lowering (the runtime fuses itself)"])
    if mode == "auto" and getattr(provider, "kind", "") != "measured":
        # nothing would be kept: skip the rewrites and their numerical checks, which run the
        # whole model several times (minutes and copies of the weights for a 1B model)
        return Decision(mode, base, notes=[
            "no device to time on: lowering is a measured choice, so none is applied and none was tried "
            "(use --lower all to apply every family that passes the check)"])
    from spa_compiler.ir import ModelIR
    from spa_compiler.ort import random_feeds

    ir = ModelIR.from_proto(model)
    cs = check_shapes or input_shapes
    check_feeds = ([feeds] if not check_shapes else []) + [
        random_feeds(ir, cs, seed=seed + 101 + i) for i in range(check_seeds - (0 if check_shapes else 1))]
    refs_cache: list[Any] = []

    def refs() -> list[Any]:  # the unlowered outputs, computed once a family has something to check
        if not refs_cache:
            refs_cache.extend(_run_cpu(model, f) for f in check_feeds)
        return refs_cache
    device = "cuda" if target == "ort-cuda" and getattr(provider, "kind", "") == "measured" else "cpu"
    plain16_cache: list[Any] = []

    def plain16() -> Any:  # the plain fp16 conversion, made once a family needs the fp16 check
        if not plain16_cache:
            plain16_cache.append(lower(model, base, input_shapes).model if precision == "fp16" and device == "cuda"
                                 else None)
        return plain16_cache[0]
    decision = Decision(mode, base)
    passing: list[str] = []
    ops = _op_types(model.graph)
    for fam in families:
        entry: dict[str, Any] = {"family": fam}
        lacking = [group for group in FAMILY_NEEDS.get(fam, ()) if not ops & set(group)]
        if lacking:  # the pattern cannot be there: not worth a rewrite of the whole model
            entry.update(fused={}, applicable=False, kept=False,
                         why="nothing to fuse (no " + " / ".join("|".join(g) for g in lacking) + " nodes)")
            decision.tried.append(entry)
            continue
        try:
            res = lower(model, Lowering(families=(fam,)), input_shapes)  # the fp32 graph rewrite
        except Exception as e:  # ORT's script raising on an unknown pattern: not applicable
            entry.update(applicable=False, kept=False, why=f"rewrite failed: {type(e).__name__}: {str(e)[:160]}")
            decision.tried.append(entry)
            continue
        counts = {k: v for c in res.fused.values() for k, v in c.items()}
        entry["fused"] = counts
        if res.skipped:
            entry["unmatched"] = res.skipped
        if not counts:
            entry.update(applicable=False, kept=False, why="nothing to fuse")
            decision.tried.append(entry)
            continue
        c32 = check(res.model, model, check_feeds, precision="fp32", device="cpu", ref_outputs=refs())
        entry["check_fp32"] = c32.to_json()
        if c32.ok and precision == "fp16":
            c16 = check(lower(model, base.with_families([fam]), input_shapes).model, model, check_feeds,
                        precision="fp16", device=device, ref_outputs=refs(), fp16_plain=plain16())
            entry["check_fp16"] = c16.to_json()
            ok = c16.ok
        else:
            ok = c32.ok
        entry["applicable"] = True
        if not ok:
            entry.update(kept=False, why="dropped: failed the numerical check")
        else:
            passing.append(fam)
        decision.tried.append(entry)
    if not passing:
        decision.notes.append("no lowering applies to this model (or none passed the check)")
        return decision
    measured = provider is not None and getattr(provider, "kind", "") == "measured"
    if mode == "all" or not measured:
        if not measured and mode == "auto":
            decision.notes.append("no device to time on: lowering is a measured choice, so none is applied "
                                  "(use --lower all to apply every family that passed the check)")
            for e in decision.tried:
                if e.get("family") in passing:
                    e.update(kept=False, why="not measured (no device)")
            return decision
        for e in decision.tried:
            if e.get("family") in passing:
                e.update(kept=True, why="--lower all")
        decision.lowering = base.with_families(passing)
        return decision
    keep = _measure_families(model, base, passing, input_shapes, feeds, provider, decision)
    decision.lowering = base.with_families(keep)
    return decision


#: Op types each family's pattern must contain (any one of each group): a model without them has
#: nothing that family fuses, so its rewrite (ORT's script over a copy of the whole model) is skipped.
FAMILY_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "attention": (("Softmax",), ("MatMul",)),
    "mha": (("Softmax",), ("MatMul",)),
    "layer_norm": (("ReduceMean",),),
    "skip_layer_norm": (("Add",), ("LayerNormalization", "SimplifiedLayerNormalization", "ReduceMean")),
    "gelu": (("Erf", "Tanh"),),
    "embed_layer_norm": (("Gather",), ("LayerNormalization", "SimplifiedLayerNormalization", "ReduceMean")),
}


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Op types of a graph's nodes, subgraphs included."""
    from spa_compiler.protos import graphs

    return {n.op_type for g in graphs(graph) for n in g.node}


def _measure_families(
    model: onnx.ModelProto,
    base: Lowering,
    passing: list[str],
    input_shapes: Mapping[str, Sequence[int]],
    feeds: Mapping[str, np.ndarray],
    provider: Any,
    decision: Decision,
) -> list[str]:
    from spa_compiler.ort import share_weights

    labels = ["none", "all"] + ([f"all-minus-{f}" for f in passing] if len(passing) > 1 else [])
    plans = [base, base.with_families(passing)] + (
        [base.with_families([g for g in passing if g != f]) for f in passing] if len(passing) > 1 else [])
    # each variant is a full model; timed side by side (paired), they share one copy of the
    # weights they have in common (`ort.share_weights`) instead of holding one each
    held: list[Any] = []
    protos = [share_weights(lower(model, p, input_shapes).model, held) for p in plans]
    times = [t.ms for t in provider.time_many(protos, feeds)]
    ms = dict(zip(labels, times, strict=True))
    decision.timings["dense_ms"] = {k: round(v, 5) for k, v in ms.items()}
    t_all = ms["all"]
    keep = []
    for f in passing:
        without = ms.get(f"all-minus-{f}", ms["none"])
        gain = without / t_all - 1.0
        entry = next(e for e in decision.tried if e.get("family") == f)
        entry["ms_without"] = round(without, 5)
        entry["gain"] = round(gain, 4)
        if gain > MARGIN:
            keep.append(f)
            entry.update(kept=True, why=f"leaving it out is {100 * gain:.1f}% slower")
        else:
            entry.update(kept=False, why=f"no measured gain ({100 * gain:+.1f}% when left out)")
    if not keep:
        decision.notes.append("no lowering made the dense model faster on this target: none applied")
        return []
    if keep != passing:
        t_none, t_keep = (t.ms for t in provider.time_many(
            [protos[0], share_weights(lower(model, base.with_families(keep), input_shapes).model, held)], feeds))
        decision.timings["kept_vs_none_ms"] = {"none": round(t_none, 5), "kept": round(t_keep, 5)}
    else:
        t_none, t_keep = ms["none"], t_all
    if t_keep > t_none * (1.0 - MARGIN):
        decision.notes.append(
            f"the kept families ({'+'.join(keep)}) were not faster than none ({t_keep:.4g} vs {t_none:.4g} ms): none applied")
        for e in decision.tried:
            if e.get("kept"):
                e.update(kept=False, why=e["why"] + "; but the kept set was not faster than none")
        return []
    return keep

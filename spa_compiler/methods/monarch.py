"""Monarch substitution as a `Method`: sites are linear layers, variants are Monarch structures.

A site is one MatMul/Gemm with a constant 2-D weight read once (`monarch.emit.site_of`; what is not
a site is counted with its reason). Its variants are "dense" and a few Monarch structures named
"b<b>r<r>" (b input and output blocks, rank r per block pair) or "b<bi>x<bo>r<r>", spread over
the MAC fractions allowed (`monarch.factor.block_choices`). The error of a variant is the relative
squared output error of the layer, tr(D H D^T) / tr(W H W^T) with D = W - P(W) the plain
projection's residual and H the layer inputs' second moment (calibration feeds, else the data-free
identity: the Frobenius error). Applying a plan projects each chosen weight, refines the factors
on H by alternating least squares when `refine` > 0 and the plan is exact (timed candidates skip
it: latency does not depend on the values), and emits the standard-ONNX form or `MonarchMatMul`.
The refined error is never above the projection's (ALS only descends), so the search's errors are
upper bounds of what is applied.

Units of the error: for an FFN, pruning's error is the share of the down projection's output
energy lost after re-fitting; Monarch's is the share of each substituted layer's output energy
lost. Both are layer-local relative energies, so they are summed in one search, but they are not
the same quantity (an up-projection error passes through the activation before it reaches the
down projection's output).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from spa_compiler.ir import ModelIR
from spa_compiler.methods.base import Plan, Site, Variant, shared_weights
from spa_compiler.monarch import emit as em
from spa_compiler.monarch import factor

logger = logging.getLogger(__name__)

DENSE = "dense"


@dataclasses.dataclass
class MonarchMethod:
    """Monarch substitution of one model's linear layers (see the module docstring).

    Attributes:
        model: The model the sites were found in (apply works on it or any clone of it).
        linear: Site id (the node's name) -> the linear site.
        shapes: Site id -> its Monarch structures (the non-dense variants), cheapest first.
        moments: Site id -> the inputs' second moment (K, K), or None (data-free: identity).
        form: "onnx" or "custom-op" (custom-op sites with bi != bo fall back to "onnx").
        refine: ALS sweeps on exact applies (0: the plain projection).
        skipped: Why layers were left out, reason -> count.
    """

    name: ClassVar[str] = "monarch"
    composes_after: ClassVar[frozenset[str]] = frozenset({"pruning"})

    model: ModelIR
    linear: dict[str, em.LinearSite]
    shapes: dict[str, list[factor.MonarchShape]]
    moments: dict[str, npt.NDArray[np.float64] | None]
    form: str = "onnx"
    refine: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    _errors: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    _factors: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    _signature: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    _svd: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    last_refine: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def find_sites(model: ModelIR, *, include: str = "", min_elements: int = 0,
                   input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[dict[str, em.LinearSite], Counter[str]]:
        """Linear sites of `model` (node name -> site) and skip reasons."""
        del input_shapes
        pattern = re.compile(include) if include else None
        sites: dict[str, em.LinearSite] = {}
        skipped: Counter[str] = Counter()
        for node in model.nodes(("MatMul", "Gemm")):
            got = em.site_of(model, node)
            if isinstance(got, str):
                if got != "weight-not-constant":  # activation x activation products are not layers
                    skipped[got] += 1
                continue
            if not node.name or node.name in sites:
                skipped["unnamed-or-duplicate-node"] += 1
                continue
            if pattern is not None and not pattern.search(node.name):
                skipped["not-included"] += 1
                continue
            if got.n * got.k < min_elements:
                skipped["too-small"] += 1
                continue
            sites[node.name] = got
        return sites, skipped

    @classmethod
    def build(
        cls,
        model: ModelIR,
        *,
        blocks: Sequence[int] = (),
        ranks: Sequence[int] = (1, 2, 4, 8, 16, 32),
        max_fraction: float = 0.5,
        min_fraction: float = 0.0,
        count: int = 6,
        asymmetric: bool = False,
        include: str = "",
        min_elements: int = 4096,
        feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
        form: str = "onnx",
        refine: int = 0,
        max_samples: int = 65536,
        progress: Any = None,
    ) -> MonarchMethod:
        """Find the sites, list their variants, collect second moments from `feeds` (None: data-free)."""
        linear, skipped = cls.find_sites(model, include=include, min_elements=min_elements)
        shapes: dict[str, list[factor.MonarchShape]] = {}
        for sid, s in list(linear.items()):
            choices = factor.block_choices(s.n, s.k, blocks=list(blocks) or None, ranks=ranks,
                                           max_fraction=max_fraction, min_fraction=min_fraction,
                                           asymmetric=asymmetric, count=count)
            if not choices:
                skipped["no-valid-block-count"] += 1
                del linear[sid]
                continue
            shapes[sid] = choices
        moments: dict[str, npt.NDArray[np.float64] | None] = {sid: None for sid in linear}
        if feeds is not None and linear:
            moments.update(_second_moments(model, linear, feeds, max_samples=max_samples))
        method = cls(model, linear, shapes, moments, form=form, refine=refine, skipped=dict(skipped))
        nodes = {n.name: n for n in model.graph.nodes}
        for sid, s in linear.items():
            x = nodes[sid].inputs[0]
            method._signature[sid] = (s.n, s.k, s.transposed, s.bias is not None,
                                      tuple(str(d) for d in (x.shape or ())), tuple(v.key for v in shapes[sid]))
        total = sum(len(v) for v in shapes.values())
        for i, (sid, vs) in enumerate(shapes.items()):
            for v in sorted(vs, key=lambda v: (v.bi, v.bo)):  # block count by block count (SVD reuse)
                method.error(sid, v.key)
            if progress:
                progress("monarch errors", i + 1, len(shapes))
        logger.info("monarch: %d sites, %d variants", len(linear), total)
        return method

    # ------------------------------------------------------------------ Method protocol
    def sites(self) -> list[Site]:
        return [Site(sid, self.name, frozenset({s.weight}), label=f"{sid} ({s.k}->{s.n})",
                     info={"n": s.n, "k": s.k}) for sid, s in self.linear.items()]

    def variants(self, site: Site | str) -> list[Variant]:
        sid = site.id if isinstance(site, Site) else site
        return [Variant(DENSE, dense=True, label="dense"),
                *(Variant(v.key, label=f"{v.key} ({100 * v.fraction:.1f}% MACs)") for v in self.shapes[sid])]

    def shape(self, sid: str, key: Hashable) -> factor.MonarchShape:
        """The structure a variant names."""
        for v in self.shapes[sid]:
            if v.key == key:
                return v
        raise ValueError(f"monarch site {sid}: no variant {key!r} (has {[v.key for v in self.shapes[sid]]})")

    def error(self, site: Site | str, variant: Hashable) -> float:
        sid = site.id if isinstance(site, Site) else site
        if variant == DENSE:
            return 0.0
        key = (sid, str(variant))
        if key not in self._errors:
            s = self.shape(sid, variant)
            w = self.linear[sid].matrix(self.model)
            rf, lf = self.factors(sid, str(variant))
            self._errors[key] = factor.output_error(w, factor.dense_weight(rf, lf), self.moments.get(sid))
            del s
        return self._errors[key]

    def factors(self, sid: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The projection's (R, L) for a variant (cached)."""
        if (sid, key) not in self._factors:
            s = self.shape(sid, key)
            w = self.linear[sid].matrix(self.model)
            if (sid, s.bi, s.bo) not in self._svd:  # one SVD per block count serves every rank
                self._svd = {(sid, s.bi, s.bo): factor.slice_svd(w, s.bi, s.bo)}
            self._factors[(sid, key)] = factor.project(w, s.bi, s.bo, s.r, svd=self._svd[(sid, s.bi, s.bo)])
        return self._factors[(sid, key)]

    def signature(self, site: Site) -> tuple[Any, ...]:
        """Sites with equal signatures are the same layer shape in the same input shape."""
        return self._signature[site.id]

    def conflicts(self, a: Site, b: Site) -> bool:
        return shared_weights(a, b)

    def apply(self, model: ModelIR, plan: Plan, *, exact: bool = True, validate: bool = True) -> dict[str, Any]:
        del validate  # emission is shape-checked by construction; the PassManager validates the pass
        nodes = {n.name: n for n in model.graph.nodes}
        done: Counter[str] = Counter()
        self.last_refine = {}
        custom = 0
        for sid, key in plan.items():
            if key == DENSE:
                continue
            site = self.linear[sid]
            if sid not in nodes:
                raise ValueError(f"monarch site {sid} is not in the model (was it rewritten by another pass?)")
            s = self.shape(sid, key)
            rf, lf = self.factors(sid, str(key))
            h = self.moments.get(sid)
            if exact and self.refine > 0 and h is not None:
                w = site.matrix(self.model)
                rf, lf, hist = factor.refine(w, h, rf, lf, iters=self.refine)
                self.last_refine[sid] = {"projection_error": hist[0], "refined_error": hist[-1], "sweeps": len(hist) - 1}
            form = self.form if (self.form != "custom-op" or s.op_compatible) else "onnx"
            custom += form == "custom-op"
            em.emit(model, site, rf, lf, form=form, nodes=nodes)
            done[s.key] += 1
        if done:
            model.cleanup()
        return {"layers_substituted": sum(done.values()), "variants": dict(done), "custom_op_nodes": custom}

    # ------------------------------------------------------------------ reports
    def detail(self, sid: str, key: Hashable, latency: float | None = None) -> dict[str, Any]:
        s = self.linear[sid]
        d: dict[str, Any] = {"site": sid, "shape": [s.n, s.k], "variant": str(key), "error": round(self.error(sid, key), 6)}
        if key != DENSE:
            v = self.shape(sid, key)
            d["mac_fraction"] = round(v.fraction, 5)
        if sid in self.last_refine:
            d.update({k: round(v, 6) if isinstance(v, float) else v for k, v in self.last_refine[sid].items()})
        if latency is not None:
            d["latency_ms"] = round(latency, 6)
        return d


def _second_moments(model: ModelIR, linear: Mapping[str, em.LinearSite], feeds: Iterable[Mapping[str, np.ndarray]],
                    *, max_samples: int) -> dict[str, npt.NDArray[np.float64]]:
    """E[x x^T] of every site's input over `feeds` (sites reading one tensor share it)."""
    from spa_compiler.calibration import ActivationCollector
    from spa_compiler.criteria.hessian import HessianAccumulator

    nodes = {n.name: n for n in model.graph.nodes}
    by_input: dict[str, list[str]] = {}
    for sid in linear:
        by_input.setdefault(nodes[sid].inputs[0].name, []).append(sid)
    accs = {name: HessianAccumulator(linear[sids[0]].k) for name, sids in by_input.items()}
    with ActivationCollector(model, sorted(by_input)) as collector:
        for acts in collector.collect(feeds):
            for name, acc in accs.items():
                if acc.n_samples < max_samples:
                    acc.add_batch(np.asarray(acts[name]).reshape(-1, acc.n_features))
    out: dict[str, npt.NDArray[np.float64]] = {}
    for name, sids in by_input.items():
        if accs[name].n_samples == 0:
            continue
        h = accs[name].second_moment()
        for sid in sids:
            out[sid] = h
    return out

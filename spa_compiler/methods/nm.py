"""N:M sparsification as a `Method`: one site per eligible weight, variants dense / "2:4" / "4:8" ...

A site is one constant float weight of a Conv, Gemm or MatMul, read by that node only. Its variants
keep n of every m consecutive weights along the *reduction* axis, the layout sparse tensor cores
(and TensorRT's sparse-weights tactics) read:

    MatMul  X @ W, W: (K, N)              groups of m along K (axis 0), for every output column
    MatMul  W @ X, W: (M, K)              groups of m along K (axis 1), for every output row
    Gemm    A @ B or A @ B^T (transB)     along K: axis 0 of B, or axis 1 with transB=1
    Conv    W: (out, C, *kernel)          groups of m consecutive input channels at every kernel
                                          position of every output channel (needs C % m == 0)

Each weight is seen as ``W2: (rows, cols)`` acting on its input's features in *group order*
(`NMView`): a MatMul/Gemm weight transposed as needed, a Conv weight over im2col columns permuted
from (channel, kernel position) to (kernel position, channel), so that a group is m consecutive
columns and `criteria.nm` needs to know nothing of layouts.

Criteria (`criteria.nm`): magnitude (|w|), Wanda (|w| * ||x_j||) and SparseGPT (OBS with the
Cholesky-row update). Wanda and SparseGPT need the layer's input second moments: from calibration
data (`--calib`, captured with ONNX Runtime, `criteria.paths.collect_hessians`), or without data the
ones the data-free pruning criterion uses (`criteria.moment_sources`: a BatchNorm chain in closed
form, else the model's response to synthetic inputs). `build` collects them on the input model in
one pass (one-shot); `solve_sequential` re-solves a chosen plan stage by stage, each stage's
statistics from the model with the earlier stages already sparsified (SparseGPT's and Wanda's
layer-by-layer order; `criteria.sequential.stage_lists`, the stages of sequential pruning).

error(site, variant) is the layer's relative output error ``||(W - W') X||^2 / ||W X||^2`` under the
same moments; for magnitude without data it is the relative weight energy ``||W - W'||^2/||W||^2``.

Declining is not failing: a weight that is not a constant, is shared, is not float32/float16/
float64, has a reduction size that is not a multiple of m (that variant only), or belongs to a
grouped Conv is skipped with its reason (`NMMethod.skipped`). fp16 weights are handled (the math runs
in float64 and the result is cast back; zeros stay exact zeros). `composes_after = {"pruning"}`:
on a pruned model the sites are the surviving weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.criteria import nm as nmath
from spa_compiler.ir import ModelIR, constant_value
from spa_compiler.methods.base import Plan, Site, Variant

logger = logging.getLogger(__name__)

#: Criteria of this method; "auto" resolves to sparsegpt with calibration data, else magnitude.
NM_CRITERIA = ("magnitude", "wanda", "sparsegpt")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))


def resolve_criterion(name: str, *, have_calibration: bool) -> str:
    """`auto` -> sparsegpt with calibration, magnitude without; others as given (ValueError if unknown)."""
    if name == "auto":
        return "sparsegpt" if have_calibration else "magnitude"
    if name not in NM_CRITERIA:
        raise ValueError(f"unknown N:M criterion {name!r}: use auto, {', '.join(NM_CRITERIA)}")
    return name


# ---------------------------------------------------------------------------------- views
@dataclasses.dataclass
class NMView:
    """One weight of one node seen as ``W2: (rows, cols)`` with columns in group order.

    Attributes:
        node: The node.
        const: The weight constant.
        op: "MatMul", "Gemm" or "Conv".
        layout: "right" (X @ W, W: (K, N)), "right-t" (Gemm transB: W: (N, K)), "left" (W @ X,
            W: (M, K)) or "conv".
        input_name: The activation whose features the columns are.
        reduction: K (Conv: C * prod(kernel)).
        channels_in / channels_out: For the TensorRT rule of thumb (Conv: C and out; else K and N).
        conv: im2col parameters (kernel, strides, pads, dilations) for Conv, else None.
        perm: Column permutation from natural (im2col / K) order to group order (None: identity).
        trans_a: Gemm's transA (the activation is transposed).
    """

    node: gs.Node
    const: gs.Constant
    op: str
    layout: str
    input_name: str
    reduction: int
    channels_in: int
    channels_out: int
    conv: dict[str, Any] | None = None
    perm: npt.NDArray[np.intp] | None = None
    trans_a: bool = False

    @property
    def weight_name(self) -> str:
        return str(self.const.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in np.asarray(self.const.values).shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.asarray(self.const.values).dtype

    def natural_2d(self, values: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """(rows, K) float64 in natural column order."""
        w = np.asarray(self.const.values if values is None else values, dtype=np.float64)
        if self.layout == "right":
            return w.T
        if self.layout in ("right-t", "left"):
            return w
        return w.reshape(w.shape[0], -1)

    def to_group_order(self, w2: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return w2 if self.perm is None else w2[:, self.perm]

    def from_group_order(self, w2: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.perm is None:
            return w2
        out = np.empty_like(w2)
        out[:, self.perm] = w2
        return out

    def w2(self) -> npt.NDArray[np.float64]:
        """The weight as (rows, cols) in group order."""
        return self.to_group_order(self.natural_2d())

    @property
    def w2d(self) -> npt.NDArray[np.float64]:
        """Natural-order (rows, K): what `criteria.paths.collect_hessians` sizes accumulators by."""
        return self.natural_2d()

    def to_weight(self, w2: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        """A group-order (rows, cols) matrix back in the constant's layout and dtype."""
        nat = self.from_group_order(w2)
        if self.layout == "right":
            nat = nat.T
        return np.ascontiguousarray(nat.reshape(self.shape)).astype(self.dtype)

    def features(self, x: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[np.float64]:
        """Natural-order feature rows (n, K) of one captured input activation."""
        a = np.asarray(x, dtype=np.float64)
        if self.conv is not None:
            from spa_compiler.criteria.paths import MAX_CONV_ROWS
            from spa_compiler.criteria.hessian import im2col

            cols = im2col(a, self.conv["kernel"], strides=self.conv["strides"], pads=self.conv["pads"],
                          dilations=self.conv["dilations"])
            if cols.shape[0] > MAX_CONV_ROWS:
                cols = cols[rng.choice(cols.shape[0], MAX_CONV_ROWS, replace=False)]
            return cols
        if self.layout == "left":  # W @ X: X (..., K, N), the features run along axis -2
            return np.moveaxis(a, -2, -1).reshape(-1, self.reduction)
        if self.trans_a:  # Gemm transA: A is (K, M)
            return a.T.reshape(-1, self.reduction)
        return a.reshape(-1, self.reduction)

    def natural_hessian_to_group(self, h: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return h if self.perm is None else h[np.ix_(self.perm, self.perm)]


def _conv_perm(channels: int, kk: int) -> npt.NDArray[np.intp]:
    """im2col column c*kk + p, reordered to (p, c): group order for channel groups at each position."""
    return (np.arange(channels)[None, :] * kk + np.arange(kk)[:, None]).reshape(-1).astype(np.intp)


def nm_view(node: gs.Node, graph_outputs: frozenset[str] = frozenset()) -> tuple[NMView | None, str | None]:
    """The view of `node`'s weight, or (None, reason) when it is not an N:M site."""
    op = node.op
    if op not in ("MatMul", "Gemm", "Conv"):
        return None, None
    if len(node.inputs) < 2:
        return None, "missing-input"
    if op == "MatMul":
        a_c, b_c = constant_value(node.inputs[0]), constant_value(node.inputs[1])
        if b_c is not None and a_c is None:
            idx, layout = 1, "right"
        elif a_c is not None and b_c is None:
            idx, layout = 0, "left"
        elif a_c is not None:
            return None, "both-inputs-constant"
        else:
            for t in node.inputs[:2]:
                if t.inputs and t.inputs[0].op in ("DequantizeLinear", "DynamicQuantizeLinear"):
                    return None, "weight-quantized"
            return None, "no-constant-weight"  # activation x activation (attention scores, ...)
    elif op == "Gemm":
        idx = 1
        if constant_value(node.inputs[0]) is not None:
            return None, "gemm-constant-A"
        layout = "right-t" if int(node.attrs.get("transB", 0)) else "right"
    else:
        idx, layout = 1, "conv"
    tensor = node.inputs[idx]
    const = constant_value(tensor)
    if const is None:
        producer = tensor.inputs[0].op if tensor.inputs else None
        if producer in ("DequantizeLinear", "DynamicQuantizeLinear"):
            return None, "weight-quantized"
        return None, "weight-not-constant"
    if len(tensor.outputs) != 1 or tensor.name in graph_outputs:
        return None, "weight-shared"
    w = np.asarray(const.values)
    if w.dtype not in FLOAT_DTYPES:
        return None, f"weight-dtype:{w.dtype}"
    act = node.inputs[1 - idx] if op != "Conv" else node.inputs[0]
    if op == "Conv":
        if w.ndim < 3:
            return None, "weight-rank"
        if int(node.attrs.get("group", 1)) != 1:
            return None, "grouped-conv"
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
            return None, "conv-auto-pad"
        spatial = w.ndim - 2
        kk = int(math.prod(w.shape[2:]))
        conv = {"kernel": tuple(int(k) for k in w.shape[2:]),
                "strides": tuple(node.attrs.get("strides", [1] * spatial)),
                "pads": tuple(node.attrs.get("pads", [0] * (2 * spatial))),
                "dilations": tuple(node.attrs.get("dilations", [1] * spatial))}
        view = NMView(node, const, op, layout, act.name, int(w.shape[1]) * kk, int(w.shape[1]), int(w.shape[0]),
                      conv=conv, perm=_conv_perm(int(w.shape[1]), kk) if kk > 1 else None)
        return view, None
    if w.ndim != 2:
        return None, "weight-rank"
    if layout == "right":
        k, n_out = int(w.shape[0]), int(w.shape[1])
    else:
        n_out, k = int(w.shape[0]), int(w.shape[1])
    trans_a = op == "Gemm" and bool(int(node.attrs.get("transA", 0)))
    return NMView(node, const, op, layout, act.name, k, k, n_out, trans_a=trans_a), None


def find_views(model: ModelIR) -> tuple[list[NMView], dict[str, int]]:
    """Every N:M-eligible weight of `model` (graph order) and why the other candidates were skipped."""
    outs = frozenset(t.name for t in model.graph.outputs)
    views: list[NMView] = []
    skipped: dict[str, int] = {}
    for node in model.graph.nodes:
        v, why = nm_view(node, outs)
        if v is not None:
            views.append(v)
        elif why is not None:
            skipped[why] = skipped.get(why, 0) + 1
    return views, skipped


# ---------------------------------------------------------------------------------- results
@dataclasses.dataclass
class SiteResult:
    """One variant of one site: the new weight (constant's layout and dtype) and its error."""

    weight: npt.NDArray[Any]
    error: float


@dataclasses.dataclass
class NMMethod:
    """N:M sparsification of one model's eligible weights (see the module docstring).

    Attributes:
        model: The model the sites were found in.
        views: Per site id (the weight's name), its view.
        patterns: Per site id, the patterns it may take ("2:4", ...), in the order asked.
        results: Per (site id, pattern), the sparse weight and its error (empty for timing only).
        criterion: magnitude, wanda or sparsegpt ("" for timing only).
        error_kind: "output" (relative output error under `moments`) or "weight-energy".
        moments: Per site id, where its second moments came from (calibration, batchnorm, ...).
        skipped: reason -> count.
    """

    name: ClassVar[str] = "nm"
    composes_after: ClassVar[frozenset[str]] = frozenset({"pruning"})

    model: ModelIR
    views: dict[str, NMView]
    patterns: dict[str, list[str]]
    results: dict[tuple[str, str], SiteResult] = dataclasses.field(default_factory=dict)
    criterion: str = ""
    error_kind: str = "weight-energy"
    moments: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    blocksize: int = 128
    damp: float = 0.01

    # ------------------------------------------------------------------ construction
    @classmethod
    def discover(cls, model: ModelIR, patterns: Sequence[str], *, min_elements: int = 0) -> NMMethod:
        """Sites and their allowed patterns, no criterion yet (enough for timing)."""
        pats = [f"{n}:{m}" for n, m in (nmath.parse_pattern(p) for p in patterns)]
        views, skipped = find_views(model)
        chosen: dict[str, NMView] = {}
        allowed: dict[str, list[str]] = {}
        for v in views:
            size = int(np.asarray(v.const.values).size)
            if size < min_elements:
                skipped["too-small"] = skipped.get("too-small", 0) + 1
                continue
            ok = []
            for p in pats:
                m = nmath.parse_pattern(p)[1]
                # Conv: groups of m input channels at each kernel position; MatMul/Gemm: of K
                if v.channels_in % m:
                    key = f"reduction-not-multiple-of-{m}"
                    skipped[key] = skipped.get(key, 0) + 1
                    continue
                ok.append(p)
            if ok:
                chosen[v.weight_name] = v
                allowed[v.weight_name] = ok
        return cls(model, chosen, allowed, skipped=skipped)

    @classmethod
    def build(
        cls,
        model: ModelIR,
        *,
        patterns: Sequence[str],
        criterion: str,
        calibration: Iterable[Mapping[str, npt.NDArray[Any]]] | None = None,
        synthetic: Callable[[], Iterable[Mapping[str, npt.NDArray[Any]]]] | None = None,
        closed_form: bool = True,
        blocksize: int = 128,
        damp: float = 0.01,
        min_elements: int = 0,
        seed: int = 0,
        progress: Callable[[str, int, int], None] | None = None,
        sites: Sequence[str] | None = None,
        solve: bool = True,
    ) -> NMMethod:
        """Find the sites, gather moments where the criterion needs them, solve every variant.

        `sites`: only these site ids get solved (the others keep only their dense variant).
        `solve=False`: sites and criterion only, nothing collected or solved (for `solve_sequential`).
        """
        method = cls.discover(model, patterns, min_elements=min_elements)
        method.criterion = criterion
        if sites is not None:
            keep = set(sites)
            method.views = {k: v for k, v in method.views.items() if k in keep}
            method.patterns = {k: v for k, v in method.patterns.items() if k in keep}
        method.blocksize, method.damp = blocksize, damp
        views = list(method.views.values())
        if views and (criterion != "magnitude" or calibration is not None):
            method.error_kind = "output"
        if not solve:
            return method
        hessians: dict[str, npt.NDArray[np.float64]] = {}
        if views and method.error_kind == "output":
            hessians = method._hessians(views, calibration, synthetic, closed_form=closed_form, seed=seed,
                                        progress=progress)
        for i, v in enumerate(views):
            method._solve(v, hessians.pop(v.weight_name, None))  # popped: one Hessian alive at a time
            if progress:
                progress(f"nm {criterion}", i + 1, len(views))
        return method

    def _solve(self, v: NMView, h: npt.NDArray[np.float64] | None,
               patterns: Sequence[str] | None = None) -> None:
        """Every pattern of site `v` by the criterion under Hessian `h` (group order; None: no data)."""
        w2 = v.w2()
        for p in self.patterns[v.weight_name] if patterns is None else patterns:
            n, m = nmath.parse_pattern(p)
            if self.criterion == "magnitude" or h is None:
                new, _ = nmath.magnitude_nm(w2, n, m)
            elif self.criterion == "wanda":
                new, _ = nmath.wanda_nm(w2, np.sqrt(np.clip(np.diag(h), 0.0, None)), n, m)
            else:
                new, _ = nmath.sparsegpt_nm(w2, h, n, m, blocksize=self.blocksize, damp=self.damp)
            self.results[(v.weight_name, p)] = SiteResult(v.to_weight(new), nmath.relative_error(w2, new, h))

    def solve_sequential(
        self,
        plan: Mapping[str, Hashable],
        calibration: Iterable[Mapping[str, npt.NDArray[Any]]],
        *,
        stages: int,
        seed: int = 0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Sequential calibration of `plan` (site -> pattern; "dense" entries are ignored), SparseGPT's
        layer-by-layer order: each site's statistics from the inputs it sees with the sites before it
        already sparsified.

        The plan's sites are cut into `stages` consecutive stages by graph position
        (`criteria.sequential.stage_lists`; sites reading the same input, such as q/k/v, always share
        a stage). For each stage, in order: one pass of the calibration feeds through the part of
        `self.model` that the stage's inputs depend on (`collect_hessians(prune=True)`) gives its
        Hessians, every pattern of its sites is solved again under them (results and errors replaced:
        the error is then relative to the outputs on the sparsified model's inputs, the quantity
        SparseGPT minimizes), and the plan's pattern is written into `self.model` before the next
        stage runs. `self.model` is therefore left with the plan applied (what `apply` writes again).
        The first stage's statistics are the dense model's (nothing before it is sparse).

        Returns:
            Stats for the report: stages run, sites re-calibrated, seconds.
        """
        import time

        from spa_compiler.criteria.moment_sources import CALIBRATION
        from spa_compiler.criteria.sequential import node_positions, stage_lists

        t0 = time.perf_counter()
        chosen = {sid: str(p) for sid, p in plan.items() if str(p) != "dense"}
        for sid in chosen:
            if sid not in self.views:
                raise ValueError(f"nm: unknown site {sid!r}")
        order = node_positions(self.model)
        by_key: dict[tuple[Any, ...], list[str]] = {}
        for sid in chosen:
            by_key.setdefault(_feature_key(self.views[sid]), []).append(sid)
        positions = {k: min(order.get(self.views[s].node.name, 0) for s in sids) for k, sids in by_key.items()}
        staged = stage_lists(positions, stages)
        tensors = self.model.tensors()
        done = 0
        for s, keys in enumerate(staged):
            views = [self.views[sid] for k in keys for sid in by_key[k]]
            hessians = self._hessians(views, calibration, None, closed_form=False, seed=seed + s, progress=None,
                                      prune=True,
                                      source=CALIBRATION if s == 0 else f"{CALIBRATION} (sequential)")
            for v in views:
                self._solve(v, hessians.pop(v.weight_name))
                tensors[v.weight_name].values = self.sparse_weight(v.weight_name, chosen[v.weight_name])
                done += 1
            if progress:
                progress("nm sequential calibration", s + 1, len(staged))
            logger.info("nm sequential calibration: stage %d/%d, %d site(s)", s + 1, len(staged), len(views))
        self.error_kind = "output"
        return {"calibration_stages": len(staged), "sites_recalibrated": done,
                "seconds_sequential": round(time.perf_counter() - t0, 2)}

    def _hessians(
        self,
        views: Sequence[NMView],
        calibration: Iterable[Mapping[str, npt.NDArray[Any]]] | None,
        synthetic: Callable[[], Iterable[Mapping[str, npt.NDArray[Any]]]] | None,
        *,
        closed_form: bool,
        seed: int,
        progress: Callable[[str, int, int], None] | None,
        prune: bool = False,
        source: str | None = None,
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Undampened ``2 E[x x^T]`` per site in group order (calibration, closed form, or synthetic)."""
        from spa_compiler.criteria.moment_sources import BATCHNORM, CALIBRATION, RESPONSE, batchnorm_moments
        from spa_compiler.criteria.paths import collect_hessians

        out: dict[str, npt.NDArray[np.float64]] = {}
        measured: list[NMView] = []
        if calibration is None and closed_form:
            tensors = self.model.tensors()
            for v in views:
                sm, why = batchnorm_moments(tensors[v.input_name], v.reduction, conv=v.conv is not None)
                if sm is None:
                    measured.append(v)
                    logger.debug("%s: moments from the random-input response (%s)", v.node.name, why)
                    continue
                out[v.weight_name] = v.natural_hessian_to_group(sm.hessian(v.reduction, damp=0.0))
                self.moments[v.weight_name] = BATCHNORM
        else:
            measured = list(views)
        if not measured:
            return out
        feeds = calibration
        source = source or CALIBRATION
        if feeds is None:
            if synthetic is None:
                raise ValueError("criterion needs calibration data or synthetic feeds")
            feeds, source = synthetic(), RESPONSE

        def tick(n: int) -> None:
            if progress:
                progress("nm calibration statistics", n, 0)

        # weights reading the same features (q/k/v of one block) share one accumulator
        reps: dict[tuple[Any, ...], NMView] = {}
        for v in measured:
            reps.setdefault(_feature_key(v), v)
        order = list(reps)
        accs = collect_hessians(self.model, [reps[k] for k in order], feeds, seed=seed,  # type: ignore[arg-type]
                                progress=tick, prune=prune)
        natural = {k: accs.pop(i).hessian(damp=0.0) for i, k in enumerate(order)}
        for v in measured:
            out[v.weight_name] = v.natural_hessian_to_group(natural[_feature_key(v)])
            self.moments[v.weight_name] = source
        return out

    # ------------------------------------------------------------------ Method protocol
    def sites(self) -> list[Site]:
        out = []
        for sid, v in self.views.items():
            out.append(Site(sid, self.name, frozenset({sid}), label=v.node.name or sid,
                            info={"op": v.op, "shape": list(v.shape), "reduction": v.reduction,
                                  "channels_in": v.channels_in, "channels_out": v.channels_out,
                                  "dtype": str(v.dtype)}))
        return out

    def variants(self, site: Site) -> list[Variant]:
        return [Variant("dense", dense=True, label="dense"),
                *(Variant(p, label=p) for p in self.patterns.get(site.id, []))]

    def error(self, site: Site | str, variant: Hashable) -> float:
        sid = site.id if isinstance(site, Site) else site
        if variant == "dense":
            return 0.0
        try:
            return self.results[(sid, str(variant))].error
        except KeyError:
            raise ValueError(f"nm: no result for site {sid!r} at {variant!r} (timing-only method?)") from None

    def signature(self, site: Site) -> tuple[Any, ...]:
        """Same op, layout and shapes (and input shape): profiled together."""
        v = self.views[site.id]
        t = v.node.inputs[0] if v.layout != "left" else v.node.inputs[1]
        in_shape = tuple(t.shape) if t is not None and t.shape is not None else None
        return (v.op, v.layout, v.shape, in_shape, repr(v.conv), tuple(self.patterns.get(site.id, [])))

    def conflicts(self, a: Site, b: Site) -> bool:
        del a, b
        return False  # one site per weight

    def sparse_weight(self, sid: str, pattern: str, *, exact: bool = True) -> npt.NDArray[Any]:
        """The site's weight at `pattern`: the criterion's result, or magnitude for timing only."""
        res = self.results.get((sid, pattern))
        if res is not None:
            return res.weight
        if exact and self.criterion:
            raise ValueError(f"nm: no result for site {sid!r} at {pattern!r}")
        v = self.views[sid]
        n, m = nmath.parse_pattern(pattern)
        new, _ = nmath.magnitude_nm(v.w2(), n, m)
        return v.to_weight(new)

    def apply(self, model: ModelIR, plan: Plan, *, exact: bool = True, validate: bool = True) -> dict[str, Any]:
        del validate  # values only: shapes and graph are unchanged
        tensors = model.tensors()
        counts: dict[str, int] = {}
        for sid, variant in plan.items():
            key = str(variant)
            if key == "dense":
                continue
            if sid not in self.views:
                raise ValueError(f"nm: unknown site {sid!r}")
            t = tensors.get(sid)
            const = constant_value(t) if t is not None else None
            if const is None:
                raise ValueError(f"nm: weight {sid!r} is not a constant of this model")
            new = self.sparse_weight(sid, key, exact=exact)
            if exact and not pattern_holds(self.views[sid], new, key):  # a bug, never user input
                raise RuntimeError(f"nm: weight {sid!r} does not satisfy {key} after sparsification")
            const.values = new
            counts[key] = counts.get(key, 0) + 1
        return {"layers_sparsified": sum(counts.values()), **{f"layers_{k}": c for k, c in sorted(counts.items())}}

    # ------------------------------------------------------------------ reports
    def prior(self, sid: str, min_channels: int) -> bool:
        """TensorRT's rule of thumb: sparse tactics pay only where C_in and C_out >= min_channels."""
        v = self.views[sid]
        return v.channels_in >= min_channels and v.channels_out >= min_channels


def _feature_key(v: NMView) -> tuple[Any, ...]:
    """Weights with the same key read the same features (q/k/v of one block): one Hessian."""
    return (v.input_name, v.layout == "left", v.trans_a, repr(v.conv))


def pattern_holds(view: NMView, weight: npt.ArrayLike, pattern: str) -> bool:
    """Whether `weight` (the constant's layout) satisfies `pattern` along the view's groups."""
    n, m = nmath.parse_pattern(pattern)
    return nmath.satisfies_pattern(view.to_group_order(view.natural_2d(weight)), n, m)

"""Re-fitting linear layers to the dense model's outputs, given the compressed model's inputs.

The OBS re-fit of a pruned consumer (`criteria.obs.solve_kept`, also in `criteria.sequential`)
minimizes ‖W X_c − W' X_c‖: it keeps the layer faithful to what it computed *on the inputs it now
sees*, so the error already in X_c (from the layers compressed before it) passes through
uncorrected, and every layer that is not pruned passes its input's error on unchanged. Pruning
errors then compound through the network.

`dense_target_refit` instead solves, for every linear layer at or after the first compressed one
(MatMul/Gemm with a constant 2-D weight, Conv with group=1), in graph order and in stages:

    min_{W', b'}  E‖(W_d x_d + b_d) − (W'_K x_c,K + b')‖²  +  λ‖W'_K − W_d,K‖²

with x_d the layer's input in the dense model and x_c the same tensor in the compressed model on the
same calibration feed, K the columns not removed (a column the compression zeroed stays zero) and
λ a damping towards the layer's current weight W_0 (the per-layer OBS re-fit of a pruned consumer,
the dense weight otherwise), relative to the mean diagonal of x_c's covariance:
‖W' − W_0‖ replaces ‖W'_K − W_d,K‖ above. A wide layer fitted on few rows over-fits (MiniLM's
1,536-wide FFN output on 64 sentences, ~1,600 tokens: the re-fit model's cosine to dense fell from
0.909 to 0.748, `benchmarks/quality/results/ablate-minilm.json`), so every `VALIDATE`-th feed is
held out: each layer keeps W_0 or takes the fit at the damping in `DAMPS` with the least error on
the held-out feeds, and the chosen fit is then redone on all feeds.
The bias term is fitted only where the layer has one (an Add of a constant after a MatMul, Gemm's
C, Conv's B): b' = b_d + W_d μ_d − W'_K μ_c,K, with the covariances centred. This is the
least-squares re-fit against the dense model's outputs (the "dense target" of layer-wise
reconstruction, which corrects the error arriving from earlier layers rather than preserving it);
bias correction falls out of the intercept.

Statistics per layer: Σ x_c x_cᵀ and Σ x_c x_dᵀ (cols² each) and the two means, from one pass of
each model over the calibration feeds per stage (prefixes only: the collectors keep only the nodes
the stage's inputs depend on). The compressed model is the masked one (`criteria.sequential`:
removed columns are zero, shapes unchanged), so every tensor of the dense model has its twin.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from spa_compiler.ir import ModelIR, constant_value

logger = logging.getLogger(__name__)

#: Damping towards the dense weight, relative to the mean diagonal of the input covariance.
DAMP = 0.01
#: Feeds are read until the first re-fitted layer has seen this many input rows and at least
#: `MIN_FEEDS` feeds were read (then the statistics of a 1536-wide layer are well determined).
REFIT_ROWS = 16384
MIN_FEEDS = 16
#: ... and at most this many feeds (images: `MAX_IMAGE_FEEDS`; their im2col rows are many).
MAX_FEEDS = 256
MAX_IMAGE_FEEDS = 64
#: Every VALIDATE-th feed is held out to choose each layer's damping (or to keep its weight).
VALIDATE = 5
#: Damping candidates, relative to the mean diagonal of the input covariance.
DAMPS = (0.01, 0.1, 1.0)
#: im2col rows kept per feed and Conv layer (random positions, the same in both models).
MAX_CONV_ROWS = 2048


@dataclasses.dataclass
class _Linear:
    node: str
    const: str
    input_name: str
    w2d: npt.NDArray[np.float64]  # dense weight, (out, cols)
    layout: str  # "matmul" (in, out), "gemm-t" (out, in), "conv"
    shape: tuple[int, ...]
    dtype: Any
    bias: str | None  # constant holding the bias, if the layer has one
    bias_shape: tuple[int, ...] | None
    b_dense: npt.NDArray[np.float64] | None
    conv: dict[str, Any] | None
    pos: int
    residual: str | None = None  # the other input of the Add the layer's output goes into, if any

    def to_weight(self, w2d: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        if self.layout == "matmul":
            return w2d.T.astype(self.dtype)
        return w2d.reshape(self.shape).astype(self.dtype)


def _w2d(node: Any, w: npt.NDArray[Any]) -> tuple[str, npt.NDArray[np.float64]] | None:
    if node.op == "MatMul" and w.ndim == 2:
        return "matmul", w.T.astype(np.float64)
    if node.op == "Gemm" and w.ndim == 2 and not node.attrs.get("transA", 0):
        return ("gemm-t", w.astype(np.float64)) if node.attrs.get("transB", 0) else ("matmul", w.T.astype(np.float64))
    if node.op == "Conv" and w.ndim >= 3 and int(node.attrs.get("group", 1)) == 1 and \
            node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"):
        return "conv", w.reshape(w.shape[0], -1).astype(np.float64)
    return None


def _bias_of(node: Any, n_out: int) -> Any:
    """The constant bias of a linear node (Gemm C, Conv B, or a following Add), if any."""
    if node.op in ("Gemm", "Conv") and len(node.inputs) > 2:
        c = constant_value(node.inputs[2])
        if c is not None and int(np.asarray(c.values).size) == n_out and len(c.outputs) == 1:
            return c
        return None
    if node.op == "MatMul" and len(node.outputs[0].outputs) == 1:
        add = node.outputs[0].outputs[0]
        if add.op == "Add":
            other = [t for t in add.inputs if t is not node.outputs[0]]
            if len(other) == 1:
                c = constant_value(other[0])
                if c is not None and int(np.asarray(c.values).size) == n_out and len(c.outputs) == 1 and \
                        np.asarray(c.values).shape[-1] == n_out:
                    return c
    return None


def _residual_of(node: Any) -> str | None:
    """The tensor a linear layer's output (after its bias Add) is added to, if it goes into one
    Add with a non-constant other input (a residual connection)."""
    out = node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op == "Add" and node.op == "MatMul":
        add = out.outputs[0]
        other = [t for t in add.inputs if t is not out]
        if len(other) == 1 and constant_value(other[0]) is not None:  # the bias Add: one step on
            out = add.outputs[0]
    if len(out.outputs) != 1 or out.outputs[0].op != "Add":
        return None
    other = [t for t in out.outputs[0].inputs if t is not out]
    if len(other) != 1 or constant_value(other[0]) is not None:
        return None
    return str(other[0].name)


def linear_layers(model: ModelIR) -> list[_Linear]:
    """Every linear layer of `model` with a constant, unshared weight, in graph order."""
    out = []
    for pos, node in enumerate(model.graph.nodes):
        if node.op not in ("MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
            continue
        const = constant_value(node.inputs[1])
        if const is None or len(const.outputs) != 1:
            continue
        w = np.asarray(const.values)
        if w.dtype.kind != "f":
            continue
        got = _w2d(node, w)
        if got is None:
            continue
        layout, w2d = got
        b = _bias_of(node, w2d.shape[0])
        conv = None
        if layout == "conv":
            spatial = w.ndim - 2
            conv = {"kernel": tuple(w.shape[2:]), "strides": tuple(node.attrs.get("strides", [1] * spatial)),
                    "pads": tuple(node.attrs.get("pads", [0] * (2 * spatial))),
                    "dilations": tuple(node.attrs.get("dilations", [1] * spatial))}
        out.append(_Linear(node.name, const.name, node.inputs[0].name, w2d, layout, tuple(w.shape), w.dtype,
                           b.name if b is not None else None,
                           tuple(np.asarray(b.values).shape) if b is not None else None,
                           np.asarray(b.values, dtype=np.float64).reshape(-1) if b is not None else None, conv, pos,
                           _residual_of(node) if layout != "conv" else None))
    return out


class _Stats:
    def __init__(self, cols: int, out: int = 0):
        self.n = 0
        self.sc = np.zeros(cols)
        self.sd = np.zeros(cols)
        self.hcc = np.zeros((cols, cols))
        self.hcd = np.zeros((cols, cols))
        # residual target: Σ x_c (r_d − r_c)ᵀ and Σ (r_d − r_c) (out > 0 only)
        self.hcr = np.zeros((cols, out)) if out else None
        self.sr = np.zeros(out) if out else None

    def merged(self, other: _Stats) -> _Stats:
        out = _Stats(0)
        out.n, out.sc, out.sd = self.n + other.n, self.sc + other.sc, self.sd + other.sd
        out.hcc, out.hcd = self.hcc + other.hcc, self.hcd + other.hcd
        if self.hcr is not None and other.hcr is not None and self.sr is not None and other.sr is not None:
            out.hcr, out.sr = self.hcr + other.hcr, self.sr + other.sr
        return out

    def add(self, xc: npt.NDArray[np.float32], xd: npt.NDArray[np.float32],
            dr: npt.NDArray[np.float32] | None = None) -> None:
        if self.hcr is not None and self.sr is not None and dr is not None:
            self.hcr += xc.T @ dr
            self.sr += dr.sum(0, dtype=np.float64)
        self.n += xc.shape[0]
        self.sc += xc.sum(0, dtype=np.float64)
        self.sd += xd.sum(0, dtype=np.float64)
        self.hcc += xc.T @ xc
        self.hcd += xc.T @ xd


def _features(lin: _Linear, x: npt.NDArray[Any], rows: npt.NDArray[np.intp] | None) -> npt.NDArray[np.float32]:
    if lin.conv is None:
        return np.asarray(x, dtype=np.float32).reshape(-1, lin.w2d.shape[1])
    from spa_compiler.criteria.hessian import im2col_rows

    c = lin.conv
    return np.asarray(im2col_rows(np.asarray(x), c["kernel"], rows, strides=c["strides"], pads=c["pads"],
                                  dilations=c["dilations"]), dtype=np.float32)


def _conv_rows(lin: _Linear, shape: tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[np.intp]:
    from spa_compiler.criteria.hessian import conv_output_shape

    c = lin.conv
    assert c is not None
    n = shape[0] * int(np.prod(conv_output_shape(shape[2:], c["kernel"], strides=c["strides"], pads=c["pads"],
                                                 dilations=c["dilations"])))
    return rng.choice(n, MAX_CONV_ROWS, replace=False) if n > MAX_CONV_ROWS else np.arange(n)


def solve_dense_target(w_dense: npt.NDArray[np.float64], st: _Stats, keep: npt.NDArray[np.intp],
                       b_dense: npt.NDArray[np.float64] | None, damp: float = DAMP,
                       w_prior: npt.NDArray[np.float64] | None = None,
                       ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """(W' full width with the removed columns zero, b' or None) minimizing the module doc's loss,
    with the damping pulling W'_K towards `w_prior` (default: the dense weight)."""
    n = max(st.n, 1)
    mc, md = st.sc / n, st.sd / n
    hcc, hcd = st.hcc / n, st.hcd / n
    if b_dense is not None:  # centred: the intercept takes the means
        hcc = hcc - np.outer(mc, mc)
        hcd = hcd - np.outer(mc, md)
    prior = w_dense if w_prior is None else w_prior
    hk = hcc[np.ix_(keep, keep)]
    lam = damp * max(float(np.mean(np.diag(hk))), 1e-12)
    hk = hk + lam * np.eye(keep.size)
    rhs = hcd[keep] @ w_dense.T + lam * prior[:, keep].T  # (K, out)
    mr = np.zeros(w_dense.shape[0])
    if st.hcr is not None and st.sr is not None:  # target + the residual's error: (r_d − r_c)
        mr = st.sr / n
        hcr = st.hcr / n - (np.outer(mc, mr) if b_dense is not None else 0.0)
        rhs = rhs + hcr[keep]
    try:
        wk_t = np.linalg.solve(hk, rhs)
    except np.linalg.LinAlgError:
        wk_t = np.linalg.lstsq(hk, rhs, rcond=None)[0]
    w = np.zeros_like(w_dense)
    w[:, keep] = wk_t.T
    b = None
    if b_dense is not None:
        b = b_dense + w_dense @ md + mr - w[:, keep] @ mc[keep]
    return w, b


def target_error(w: npt.NDArray[np.float64], b: npt.NDArray[np.float64] | None, st: _Stats,
                 w_dense: npt.NDArray[np.float64], b_dense: npt.NDArray[np.float64] | None) -> float:
    """E‖y_d − (W x_c + b)‖² − E‖y_d‖² on `st`'s rows (the dense outputs' energy, the same for every
    candidate, left out), y_d = W_d x_d + b_d."""
    n = max(st.n, 1)
    mc, md = st.sc / n, st.sd / n
    bd = np.zeros(w_dense.shape[0]) if b_dense is None else b_dense
    bb = np.zeros(w.shape[0]) if b is None else b
    cross = float(np.sum(w * (w_dense @ (st.hcd.T / n)))) + float(bd @ (w @ mc))  # E[y_dᵀ W x_c]
    cross += float(bb @ (w_dense @ md + bd))
    if st.hcr is not None and st.sr is not None:
        cross += float(np.sum(w * (st.hcr.T / n))) + float(bb @ (st.sr / n))
    energy = float(np.sum((w @ (st.hcc / n)) * w)) + 2.0 * float(bb @ (w @ mc)) + float(bb @ bb)
    return energy - 2.0 * cross


def dense_target_refit(
    model: ModelIR,
    dense: ModelIR,
    calibration: Iterable[Mapping[str, Any]],
    *,
    stages: int = 4,
    seed: int = 0,
    damps: tuple[float, ...] = DAMPS,
    max_rows: int = REFIT_ROWS,
    residual: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-fit `model`'s linear layers (masked compressed, same graph as `dense`) in place.

    Returns stats for the report and, under "refitted", the constant names written."""
    from spa_compiler.calibration import ActivationCollector

    t0 = time.perf_counter()
    lins = linear_layers(model)
    dlins = {x.node: x for x in linear_layers(dense)}
    lins = [x for x in lins if x.node in dlins and dlins[x.node].w2d.shape == x.w2d.shape]
    if not lins:
        return {"refit_layers": 0}
    # the first layer whose weight differs from the dense one: everything before sees dense inputs
    changed = [x.pos for x in lins if not np.array_equal(x.w2d, dlins[x.node].w2d)]
    if not changed:
        return {"refit_layers": 0}
    first = min(changed)
    todo = [x for x in lins if x.pos >= first]
    lo, hi = todo[0].pos, todo[-1].pos
    width = max(1, hi - lo + 1)
    n_st = max(1, stages)
    by_stage: dict[int, list[_Linear]] = {}
    if residual:  # one residual-corrected layer a stage: two in one stage would both correct the same error
        k = 0
        for x in todo:
            by_stage.setdefault(k, []).append(x)
            k += 1 if x.residual else 0
    else:
        for x in todo:
            by_stage.setdefault(min(n_st - 1, (x.pos - lo) * n_st // width), []).append(x)
    tensors = model.tensors()
    written: list[str] = []
    rng = np.random.default_rng(seed)
    done_stages = 0
    feeds = _capped(calibration, max_rows)
    chosen: dict[float | None, int] = {}
    for s in sorted(by_stage):
        group = by_stage[s]
        res = {x.node: x.residual for x in group if residual and x.residual}
        names = sorted({x.input_name for x in group} | set(res.values()))
        fit = {x.node: _Stats(x.w2d.shape[1], x.w2d.shape[0] if x.node in res else 0) for x in group}
        val = {x.node: _Stats(x.w2d.shape[1], x.w2d.shape[0] if x.node in res else 0) for x in group}
        col_c = ActivationCollector(model, names, prune=True)
        col_d = ActivationCollector(dense, names, prune=True)
        for i, (ac, ad) in enumerate(zip(col_c.collect(feeds), col_d.collect(feeds))):
            into = val if len(feeds) >= 2 * VALIDATE and i % VALIDATE == VALIDATE - 1 else fit
            for x in group:
                a_c, a_d = np.asarray(ac[x.input_name]), np.asarray(ad[x.input_name])
                rows = _conv_rows(x, a_c.shape, rng) if x.conv is not None else None
                dr = None
                if x.node in res:
                    r_c, r_d = np.asarray(ac[res[x.node]]), np.asarray(ad[res[x.node]])
                    if r_c.size == a_c.size // x.w2d.shape[1] * x.w2d.shape[0]:
                        dr = (r_d.astype(np.float32) - r_c.astype(np.float32)).reshape(-1, x.w2d.shape[0])
                into[x.node].add(_features(x, a_c, rows), _features(x, a_d, rows), dr)
        col_c.close()
        col_d.close()
        for x in group:
            d = dlins[x.node]
            cur = np.asarray(tensors[x.const].values)
            cur2d = _w2d(next(n for n in model.graph.nodes if n.name == x.node), cur)
            assert cur2d is not None
            w_cur = cur2d[1]
            b_cur = np.asarray(tensors[x.bias].values, dtype=np.float64).reshape(-1) if x.bias else None
            removed = np.flatnonzero(~w_cur.any(axis=0) & d.w2d.any(axis=0))
            keep = np.setdiff1d(np.arange(d.w2d.shape[1]), removed)
            b_d = d.b_dense if x.bias else None
            # candidates fitted on the fit feeds, judged on the held-out ones; the weight as it is
            # (the per-layer re-fit, or the dense weight of a layer not pruned) is a candidate too
            choice, best = None, np.inf
            if val[x.node].n:
                best = target_error(w_cur, b_cur, val[x.node], d.w2d, b_d)
            for lam in damps:
                w, b = solve_dense_target(d.w2d, fit[x.node], keep, b_d, damp=lam, w_prior=w_cur)
                e = target_error(w, b, val[x.node], d.w2d, b_d) if val[x.node].n else -np.inf
                if np.isfinite(w).all() and e < best:
                    choice, best = lam, e
                if not val[x.node].n:
                    break  # nothing held out (fewer than 2 * VALIDATE feeds): the first damping
            chosen[choice] = chosen.get(choice, 0) + 1
            if choice is None:
                continue  # the weight as it is predicts the dense outputs best on held-out feeds
            w, b = solve_dense_target(d.w2d, fit[x.node].merged(val[x.node]), keep, b_d, damp=choice,
                                      w_prior=w_cur)
            if not np.isfinite(w).all() or (b is not None and not np.isfinite(b).all()):
                logger.warning("dense-target re-fit of %s is not finite; kept as it was", x.node)
                continue
            tensors[x.const].values = x.to_weight(w)
            if b is not None and x.bias is not None and x.bias_shape is not None:
                tensors[x.bias].values = b.reshape(x.bias_shape).astype(np.asarray(tensors[x.bias].values).dtype)
            written.append(x.const)
        done_stages += 1
        if progress:
            progress("dense-target re-fit", done_stages, len(by_stage))
        logger.info("dense-target re-fit: stage %d/%d, %d layer(s)", done_stages, len(by_stage), len(group))
    return {"refit_layers": len(written), "refit_stages": done_stages, "refit_feeds": len(feeds),
            "refit_damping_chosen": {("kept" if k is None else str(k)): v for k, v in chosen.items()},
            "seconds_refit": round(time.perf_counter() - t0, 2), "refitted": written}


def _capped(calibration: Iterable[Mapping[str, Any]], max_rows: int) -> list[Mapping[str, Any]]:
    """The first feeds of `calibration` until `max_rows` rows (leading dims of the first input but
    the last: tokens, or images) and `MIN_FEEDS` feeds, else all (`max_rows` <= 0: all)."""
    out: list[Mapping[str, Any]] = []
    rows = 0
    for f in calibration:
        out.append(f)
        first = np.asarray(next(iter(f.values()))) if f else np.zeros(0)
        tokens = first.ndim > 1 and first.dtype.kind in "iu"
        rows += int(np.prod(first.shape[:-1])) if tokens else int(first.shape[0]) if first.ndim else 1
        cap = MAX_FEEDS if tokens else MAX_IMAGE_FEEDS
        if max_rows > 0 and ((rows >= max_rows and len(out) >= MIN_FEEDS) or len(out) >= cap):
            break
    return out


def adopt_refit(model: ModelIR, method: Any, kept: Mapping[str, int], written: Iterable[str]) -> None:
    """Make `method.apply` write the re-fitted weights of the pruned consumers (instead of its own
    OBS re-fit) when it prunes `model` to `kept`: each path's view whose constant was re-fitted gets
    the model's current (masked, full-width) values at that kept count."""
    names = set(written)
    tensors = model.tensors()
    for g, k in kept.items():
        path = method.paths.get(g) if method.paths else None
        if path is None or k >= path.n_units:
            continue
        for i, v in enumerate(path.views):
            if v.const.name in names and v.const.name in tensors:
                path.fitted[i] = (k, np.array(tensors[v.const.name].values))


__all__ = ["adopt_refit", "dense_target_refit", "linear_layers", "solve_dense_target"]

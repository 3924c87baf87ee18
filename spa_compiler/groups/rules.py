"""Per-op channel propagation rules: `RULES[op_type](ctx, node)`, as in Torch-Pruning / DepGraph.

A rule states, for one node, which axes of its inputs and outputs are the same index space
(`ctx.same`), which are cut into parts (Concat/Split/Slice: sums) or factored (Reshape heads:
products), which are contracted by a weight (the *consumers* of a group: `ctx.contract`), which are
reduced or mixed (`ctx.freeze`, `ctx.reduce`), and which shape-carrying inputs or attributes must
be rewritten when sizes change (`ctx.slot`). Axis terms come from `ctx.inp(node, i)` /
`ctx.out(node, j)`: one term per axis (see `spa_compiler.groups.dims`).

Keys are `op_type` for the default ONNX domain and `"domain:op_type"` otherwise. An op without a
rule is *unknown*: every axis it touches is frozen with reason `unknown-op:<domain>:<op>` (the
analysis never guesses).

| op kind | rule |
| --- | --- |
| unary elementwise (Relu, Gelu, Erf, Cast, ...) | output = input |
| n-ary elementwise, broadcast (Add, Mul, Where, PRelu, ...) | right-aligned equal axes are joined |
| Conv / ConvTranspose (any group) | in = (group × in/group), out = (group × out/group) |
| MatMul / Gemm / Einsum | contracted axes joined and recorded; batch axes joined |
| Attention (opset 23+) | heads × head size products, GQA groups, head-count attributes rewritten |
| BatchNorm / InstanceNorm | per-channel parameters = channel axis |
| LayerNorm / RMSNorm (op) | normalized axes reduced (hidden width) |
| GroupNorm | channels = (groups × per-group); per-group part frozen |
| Softmax, Arg*, TopK, CumSum, non-mean reductions | axis frozen |
| ReduceMean / ReduceL2 / ReduceSumSquare | axis reduced (exported RMSNorm / LayerNorm chains) |
| Concat / Split / Slice / Gather(const scalar) | sums of parts; bounds and sizes rewritten |
| Reshape, Flatten, Transpose, (Un)Squeeze, Expand, Tile, DepthToSpace | row-major factors |
| Pool / Resize / Pad | channel and batch axes pass through |
| Gather (run-time indices), GatherND, Scatter*, NonZero, ... | data-dependent: frozen |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.groups.dims import DimSpace, Term

#: A size requirement: const + Σ coef · size(term).
Req = tuple[int, tuple[tuple[int, Term], ...]]


def size_req(*terms: Term, const: int = 0) -> Req:
    """The requirement `const + Σ size(term)`."""
    return (const, tuple((1, t) for t in terms))


class RuleContext(Protocol):
    """What a rule sees (implemented by `channel_groups`)."""

    space: DimSpace
    opset: int

    def inp(self, node: gs.Node, i: int) -> list[Term] | None:
        """Axis terms of input i (None if absent)."""

    def out(self, node: gs.Node, j: int) -> list[Term] | None:
        """Axis terms of output j (None if absent)."""

    def shape_in(self, node: gs.Node, i: int) -> tuple[int, ...] | None:
        """Static shape of input i."""

    def shape_out(self, node: gs.Node, j: int) -> tuple[int, ...] | None:
        """Static shape of output j."""

    def const(self, node: gs.Node, i: int) -> npt.NDArray[Any] | None:
        """Value of input i if it is a constant."""

    def value(self, node: gs.Node, i: int) -> npt.NDArray[Any] | None:
        """Value of input i if it is a constant or computable shape arithmetic."""

    def same(self, a: Term, b: Term, why: str) -> bool:
        """Unify two axes (freezing both, with the reason, when impossible)."""

    def freeze(self, terms: Term | Sequence[Term], reason: str) -> None:
        """Mark axes as not prunable."""

    def reduce(self, term: Term, reason: str) -> None:
        """Mark an axis as normalized over (hidden width)."""

    def tag(self, term: Term, tag: str) -> None:
        """Attach a tag (e.g. "head") to an axis."""

    def contract(self, node: gs.Node, i: int, axis: int) -> None:
        """Input i of node is contracted along `axis` (a consumer of whatever group that is)."""

    def slot(
        self,
        node: gs.Node,
        kind: str,
        where: int | str,
        req: Sequence[Req | None],
        ref: Sequence[Term | None] | None = None,
    ) -> None:
        """A shape-carrying input or attribute whose elements must equal `req` after pruning."""

    def freeze_node(self, node: gs.Node, reason: str) -> None:
        """Freeze every axis of every input and output of `node`."""

    def is_used(self, t: gs.Tensor) -> bool:
        """Whether a tensor is read by a node or is a graph output."""


Rule = Callable[[RuleContext, gs.Node], None]


def _name(node: gs.Node) -> str:
    return node.name or node.op


def _attr(node: gs.Node, key: str, default: Any = None) -> Any:
    return node.attrs.get(key, default)


def _norm_axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


# ---------------------------------------------------------------------- generic rules
def unary(ctx: RuleContext, node: gs.Node) -> None:
    """Output j = input 0, axis by axis (activations, casts, Dropout's mask too)."""
    x = ctx.inp(node, 0)
    for j in range(len(node.outputs)):
        y = ctx.out(node, j)
        if x is None or y is None:
            continue
        if len(x) != len(y):
            ctx.freeze_node(node, f"rank-change:{node.op}")
            return
        for a, b in zip(x, y, strict=False):
            ctx.same(a, b, _name(node))


def broadcast(ctx: RuleContext, node: gs.Node, inputs: Sequence[int] | None = None) -> None:
    """Numpy broadcasting: right-aligned axes of equal size are the same index space."""
    y = ctx.out(node, 0)
    if y is None:
        return
    ys = ctx.shape_out(node, 0) or ()
    idx = range(len(node.inputs)) if inputs is None else inputs
    for i in idx:
        x = ctx.inp(node, i)
        xs = ctx.shape_in(node, i)
        if x is None or xs is None:
            continue
        off = len(y) - len(x)
        if off < 0:
            ctx.freeze_node(node, f"bad-broadcast:{node.op}")
            return
        for k, t in enumerate(x):
            if xs[k] == ys[off + k]:
                ctx.same(t, y[off + k], _name(node))
            elif xs[k] != 1:
                ctx.freeze_node(node, f"bad-broadcast:{node.op}")
                return
    for j in range(1, len(node.outputs)):
        z = ctx.out(node, j)
        if z is not None and len(z) == len(y):
            for a, b in zip(z, y, strict=False):
                ctx.same(a, b, _name(node))


def elementwise(ctx: RuleContext, node: gs.Node) -> None:
    """Broadcasting n-ary op."""
    broadcast(ctx, node)


def nothing(ctx: RuleContext, node: gs.Node) -> None:
    """Outputs carry no channel relation (Shape, Size, Constant, Range...)."""
    del ctx, node


def frozen_outputs(reason: str) -> Rule:
    """Outputs are new index spaces that cannot be pruned (e.g. Range)."""

    def rule(ctx: RuleContext, node: gs.Node) -> None:
        for j in range(len(node.outputs)):
            y = ctx.out(node, j)
            if y:
                ctx.freeze(y, f"{reason}:{_name(node)}")

    return rule


def data_dependent(ctx: RuleContext, node: gs.Node) -> None:
    """Indices read from data: every axis touched is frozen."""
    ctx.freeze_node(node, f"data-dependent:{node.op}:{_name(node)}")


# ---------------------------------------------------------------------- linear algebra
def conv(ctx: RuleContext, node: gs.Node) -> None:
    """X (N, C, *s), W (M, C/g, *k), B (M) -> Y (N, M, *s'); C = (g, C/g), M = (g, M/g)."""
    x, w, y = ctx.inp(node, 0), ctx.inp(node, 1), ctx.out(node, 0)
    if x is None or w is None or y is None or len(x) < 2:
        ctx.freeze_node(node, "conv-shapes-unknown")
        return
    sp = ctx.space
    g = int(_attr(node, "group", 1))
    ctx.same(x[0], y[0], _name(node))
    m = sp.size(w[0])
    if m % g:
        ctx.freeze_node(node, "conv-group-mismatch")
        return
    groups = sp.new(g)
    co = sp.new(m // g)
    ok = ctx.same(x[1], sp.prod((groups, w[1])), _name(node))
    ok &= ctx.same(y[1], sp.prod((groups, co)), _name(node))
    ok &= ctx.same(w[0], sp.prod((groups, co)), _name(node))
    if sp.size(w[1]) > 1:
        ctx.contract(node, 1, 1)
    b = ctx.inp(node, 2)
    if b is not None:
        ctx.same(b[0], y[1], _name(node))
    if g > 1:
        ctx.slot(node, "attr", "group", [size_req(groups)])
    _spatial_pass(ctx, node, x, y, w)


def _spatial_pass(
    ctx: RuleContext, node: gs.Node, x: list[Term], y: list[Term], w: list[Term]
) -> None:
    """Spatial axes are the same only for a 1x1, stride-1, unpadded conv (else unrelated)."""
    ks = [ctx.space.size(t) for t in w[2:]]
    strides = _attr(node, "strides", [1] * len(ks))
    pads = _attr(node, "pads", [0] * 2 * len(ks))
    if all(k == 1 for k in ks) and all(s == 1 for s in strides) and not any(pads):
        for a, b in zip(x[2:], y[2:], strict=False):
            if ctx.space.size(a) == ctx.space.size(b):
                ctx.same(a, b, _name(node))


def conv_transpose(ctx: RuleContext, node: gs.Node) -> None:
    """X (N, C, *s), W (C, M/g, *k) -> Y (N, M, *s'); C = (g, C/g) contracted per group."""
    x, w, y = ctx.inp(node, 0), ctx.inp(node, 1), ctx.out(node, 0)
    if x is None or w is None or y is None:
        ctx.freeze_node(node, "conv-shapes-unknown")
        return
    sp = ctx.space
    g = int(_attr(node, "group", 1))
    ctx.same(x[0], y[0], _name(node))
    c = sp.size(w[0])
    if c % g:
        ctx.freeze_node(node, "conv-group-mismatch")
        return
    groups = sp.new(g)
    ci = sp.new(c // g)
    ctx.same(x[1], sp.prod((groups, ci)), _name(node))
    ctx.same(w[0], sp.prod((groups, ci)), _name(node))
    ctx.same(y[1], sp.prod((groups, w[1])), _name(node))
    if c // g > 1:
        ctx.contract(node, 1, 0)
    b = ctx.inp(node, 2)
    if b is not None:
        ctx.same(b[0], y[1], _name(node))
    if g > 1:
        ctx.slot(node, "attr", "group", [size_req(groups)])


def matmul(ctx: RuleContext, node: gs.Node) -> None:
    """A (..., M, K) @ B (..., K, N): K joined and contracted, batch axes broadcast-joined.

    A constant operand is a weight (its K axis is a consumer member); with two run-time operands
    (attention) batch axes are tagged "head" and K and N "head_dim".
    """
    a, b, y = ctx.inp(node, 0), ctx.inp(node, 1), ctx.out(node, 0)
    sa, sb, sy = ctx.shape_in(node, 0), ctx.shape_in(node, 1), ctx.shape_out(node, 0)
    if a is None or b is None or y is None or sa is None or sb is None or sy is None:
        ctx.freeze_node(node, "matmul-shapes-unknown")
        return
    ka = a[-1]
    kb = b[-2] if len(b) >= 2 else b[0]
    ctx.same(ka, kb, _name(node))
    ybatch = list(y)
    ys = list(sy)
    if len(b) >= 2:
        ctx.same(y[-1], b[-1], _name(node))
        ybatch, ys = ybatch[:-1], ys[:-1]
    if len(a) >= 2:
        ctx.same(ybatch[-1], a[-2], _name(node))
        ybatch, ys = ybatch[:-1], ys[:-1]
    batch_axes: list[Term] = []
    for terms, shape in ((a[:-2], sa[:-2]), (b[:-2], sb[:-2])):
        off = len(ybatch) - len(terms)
        for k, t in enumerate(terms):
            if shape[k] == ys[off + k]:
                ctx.same(t, ybatch[off + k], _name(node))
                batch_axes.append(t)
    ca, cb = ctx.const(node, 0), ctx.const(node, 1)
    if cb is not None:
        ctx.contract(node, 1, len(b) - 2 if len(b) >= 2 else 0)
    elif ca is not None:
        ctx.contract(node, 0, len(a) - 1)
    else:
        ctx.contract(node, 0, len(a) - 1)
        for t in batch_axes:
            ctx.tag(t, "head")
        ctx.tag(ka, "head_dim")
        if len(b) >= 2:
            ctx.tag(b[-1], "head_dim")


def gemm(ctx: RuleContext, node: gs.Node) -> None:
    """Y (M, N) = A (M, K | K, M) · B (K, N | N, K) + C; K joined and contracted."""
    a, b, y = ctx.inp(node, 0), ctx.inp(node, 1), ctx.out(node, 0)
    if a is None or b is None or y is None:
        ctx.freeze_node(node, "gemm-shapes-unknown")
        return
    ta, tb = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
    am, ak = (1, 0) if ta else (0, 1)
    bk, bn = (1, 0) if tb else (0, 1)
    ctx.same(a[ak], b[bk], _name(node))
    ctx.same(y[0], a[am], _name(node))
    ctx.same(y[1], b[bn], _name(node))
    if ctx.inp(node, 2) is not None:
        broadcast(ctx, node, inputs=[2])
    if ctx.const(node, 1) is not None:
        ctx.contract(node, 1, bk)
    else:
        ctx.contract(node, 0, ak)


def einsum(ctx: RuleContext, node: gs.Node) -> None:
    """Letters name axes: equal letters are joined; letters absent from the output contracted."""
    eq = str(_attr(node, "equation", "")).replace(" ", "")
    if "..." in eq or "->" not in eq:
        ctx.freeze_node(node, "einsum-implicit-or-ellipsis")
        return
    lhs, rhs = eq.split("->")
    specs = lhs.split(",")
    seen: dict[str, Term] = {}
    y = ctx.out(node, 0)
    if y is None or len(y) != len(rhs):
        ctx.freeze_node(node, "einsum-shapes")
        return
    for ch, t in zip(rhs, y, strict=False):
        seen[ch] = t
    for i, spec in enumerate(specs):
        x = ctx.inp(node, i)
        if x is None or len(x) != len(spec):
            ctx.freeze_node(node, "einsum-shapes")
            return
        for ch, t in zip(spec, x, strict=False):
            if ch in seen:
                if ctx.space.size(seen[ch]) == ctx.space.size(t):
                    ctx.same(seen[ch], t, _name(node))
            else:
                seen[ch] = t
    consts = [ctx.const(node, i) is not None for i in range(len(specs))]
    for i, spec in enumerate(specs):
        for k, ch in enumerate(spec):
            if ch not in rhs and (consts[i] or not any(consts)):
                ctx.contract(node, i, k)
                if not any(consts):
                    break


def attention(ctx: RuleContext, node: gs.Node) -> None:
    """ONNX Attention (opset 23+): heads and head sizes as products; GQA kv heads with their
    query group; `q_num_heads` / `kv_num_heads` rewritten, the default 1/sqrt(head_size) scale
    pinned when head sizes shrink; the key-sequence axis (softmax) frozen."""
    q, k, v, y = ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2), ctx.out(node, 0)
    if q is None or k is None or v is None or y is None or len(q) not in (3, 4):
        ctx.freeze_node(node, "attention-shapes")
        return
    sp = ctx.space
    nm = _name(node)
    if len(q) == 3:
        hq_n, hkv_n = int(_attr(node, "q_num_heads", 0)), int(_attr(node, "kv_num_heads", 0))
        if not hq_n or not hkv_n or hq_n % hkv_n or sp.size(q[2]) % hq_n or sp.size(v[2]) % hkv_n:
            ctx.freeze_node(node, "attention-heads")
            return
        kv, rep = sp.new(hkv_n), sp.new(hq_n // hkv_n)
        d, dv = sp.new(sp.size(q[2]) // hq_n), sp.new(sp.size(v[2]) // hkv_n)
        heads = sp.prod((kv, rep))
        ctx.same(q[2], sp.prod((kv, rep, d)), nm)
        ctx.same(k[2], sp.prod((kv, d)), nm)
        ctx.same(v[2], sp.prod((kv, dv)), nm)
        ctx.same(y[2], sp.prod((kv, rep, dv)), nm)
        ctx.same(q[1], y[1], nm)
        ctx.same(k[1], v[1], nm)
        kseq = k[1]
        ctx.contract(node, 0, 2)
        ctx.slot(node, "attr", "q_num_heads", [size_req(heads)])
        ctx.slot(node, "attr", "kv_num_heads", [size_req(kv)])
    else:
        hq_n, hkv_n = sp.size(q[1]), sp.size(k[1])
        if hq_n % hkv_n:
            ctx.freeze_node(node, "attention-heads")
            return
        kv, rep = sp.new(hkv_n), sp.new(hq_n // hkv_n)
        heads, d, dv = sp.prod((kv, rep)), q[3], v[3]
        ctx.same(q[1], heads, nm)
        ctx.same(k[1], kv, nm)
        ctx.same(v[1], kv, nm)
        ctx.same(k[3], d, nm)
        ctx.same(y[1], heads, nm)
        ctx.same(y[3], dv, nm)
        ctx.same(q[2], y[2], nm)
        ctx.same(k[2], v[2], nm)
        kseq = k[2]
        ctx.contract(node, 0, 3)
    for t in (q[0], k[0], v[0]):
        ctx.same(t, y[0], nm)
    ctx.tag(kv, "head")
    ctx.tag(rep, "head")
    ctx.tag(d, "head_dim")
    ctx.tag(dv, "head_dim")
    ctx.freeze(kseq, f"softmax-axis:{nm}")
    if "scale" not in node.attrs:
        ctx.slot(node, "default_scale", "scale", [size_req(d)])
    for i in (
        3,
        4,
        5,
        6,
    ):  # mask, past key/value, nonpad lengths: anything of the wrong kind freezes
        x = ctx.inp(node, i)
        if x is None:
            continue
        if i in (4, 5) and len(x) == 4:
            ctx.same(x[1], kv, nm)
            ctx.same(x[3], d if i == 4 else dv, nm)
            ctx.freeze(x[2], f"past-sequence:{nm}")
        elif i == 3:
            xs = [sp.size(t) for t in x]
            if len(x) >= 3 and xs[-3] == hq_n and hq_n > 1:
                ctx.same(x[-3], heads, nm)
    for j in (1, 2):
        z = ctx.out(node, j)
        if z is not None and len(z) == 4:
            ctx.same(z[1], kv, nm)
            ctx.same(z[3], d if j == 1 else dv, nm)
            ctx.freeze(z[2], f"present-sequence:{nm}")
    z = ctx.out(node, 3)
    if z is not None and len(z) == 4:
        ctx.same(z[1], heads, nm)


# ---------------------------------------------------------------------- normalization
def batchnorm(ctx: RuleContext, node: gs.Node) -> None:
    """Per-channel scale, bias, mean, var on axis 1; Y = X."""
    x = ctx.inp(node, 0)
    if x is None or len(x) < 2:
        ctx.freeze_node(node, "batchnorm-shapes")
        return
    unary(ctx, node) if len(node.outputs) == 1 else ctx.freeze_node(node, "batchnorm-training-mode")
    for i in range(1, len(node.inputs)):
        p = ctx.inp(node, i)
        if p is not None:
            ctx.same(p[0], x[1], _name(node))


def instancenorm(ctx: RuleContext, node: gs.Node) -> None:
    """Normalized over spatial axes only: channels pass through with their scale and bias."""
    batchnorm(ctx, node)


def layernorm(ctx: RuleContext, node: gs.Node) -> None:
    """LayerNormalization / RMSNormalization: axes [axis:] normalized (reduced: hidden width)."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        ctx.freeze_node(node, "layernorm-shapes")
        return
    r = len(x)
    axis = _norm_axis(int(_attr(node, "axis", -1)), r)
    for a, b in zip(x, y, strict=False):
        ctx.same(a, b, _name(node))
    for k in range(axis, r):
        ctx.reduce(x[k], f"{node.op}:{_name(node)}")
    for i in (1, 2):
        p = ctx.inp(node, i)
        ps = ctx.shape_in(node, i)
        if p is None or ps is None:
            continue
        off = r - len(p)
        for k, t in enumerate(p):
            if ps[k] != 1 and off + k >= 0:
                ctx.same(t, x[off + k], _name(node))
    for j in range(1, len(node.outputs)):
        z = ctx.out(node, j)
        if z is not None:
            for k in range(min(axis, len(z))):
                ctx.same(z[k], x[k], _name(node))


def skip_layernorm(ctx: RuleContext, node: gs.Node) -> None:
    """com.microsoft Skip(Simplified)LayerNormalization: (input + skip + bias) normalized over the
    last axis; gamma/beta/bias per channel; the sum output (index 3) is the residual stream."""
    broadcast(ctx, node, inputs=[0, 1])
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    ctx.reduce(x[-1], f"{node.op}:{_name(node)}")
    for i in range(2, len(node.inputs)):
        p = ctx.inp(node, i)
        if p is not None and len(p) == 1:
            ctx.same(p[0], x[-1], _name(node))
    for j in range(1, len(node.outputs)):
        z = ctx.out(node, j)
        if z is None:
            continue
        if len(z) == len(x) and ctx.space.size(z[-1]) == ctx.space.size(x[-1]):
            for a, b in zip(z, y, strict=False):
                ctx.same(a, b, _name(node))
        else:
            for a, b in zip(z[:-1], x[:-1], strict=False):
                ctx.same(a, b, _name(node))


def groupnorm(ctx: RuleContext, node: gs.Node) -> None:
    """GroupNormalization: C = (groups, C/groups); the per-group part is mixed (frozen)."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        ctx.freeze_node(node, "groupnorm-shapes")
        return
    sp = ctx.space
    ng = int(_attr(node, "num_groups"))
    c = sp.size(x[1])
    for a, b in zip(x, y, strict=False):
        ctx.same(a, b, _name(node))
    if c % ng:
        ctx.freeze(x[1], "groupnorm-shape")
        return
    groups, per = sp.new(ng), sp.new(c // ng)
    ctx.same(x[1], sp.prod((groups, per)), _name(node))
    ctx.freeze(per, f"groupnorm-within-group:{_name(node)}")
    for i in (1, 2):
        p = ctx.inp(node, i)
        if p is not None:
            target = x[1] if sp.size(p[0]) == c else groups
            ctx.same(p[0], target, _name(node))
    ctx.slot(node, "attr", "num_groups", [size_req(groups)])


def lrn(ctx: RuleContext, node: gs.Node) -> None:
    """Local response normalization mixes neighbouring channels."""
    unary(ctx, node)
    x = ctx.inp(node, 0)
    if x is not None:
        ctx.freeze(x[1], f"lrn-mixes-channels:{_name(node)}")


# ---------------------------------------------------------------------- reductions
def _reduce_axes(ctx: RuleContext, node: gs.Node, rank: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = ctx.value(node, 1)
        if v is None:
            return None
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        axes = list(_attr(node, "axes", []) or [])
    if not axes:
        return [] if int(_attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(_norm_axis(a, rank) for a in axes)


def _map_kept_axes(ctx: RuleContext, node: gs.Node, x: list[Term], axes: Sequence[int]) -> None:
    y = ctx.out(node, 0)
    if y is None:
        return
    keep = bool(int(_attr(node, "keepdims", 1)))
    j = 0
    for k, t in enumerate(x):
        if k in axes:
            if keep:
                j += 1
            continue
        if j < len(y):
            ctx.same(t, y[j], _name(node))
        j += 1


def reduction(mode: str) -> Rule:
    """Reduce* ops; `mode` "reduce" marks the axis normalized (mean-like), "freeze" freezes it."""

    def rule(ctx: RuleContext, node: gs.Node) -> None:
        x = ctx.inp(node, 0)
        if x is None:
            ctx.freeze_node(node, "reduce-shapes")
            return
        axes = _reduce_axes(ctx, node, len(x))
        if axes is None:
            ctx.freeze_node(node, f"reduce-axes-unknown:{_name(node)}")
            return
        for a in axes:
            if mode == "reduce":
                ctx.reduce(x[a], f"{node.op}:{_name(node)}")
            else:
                ctx.freeze(x[a], f"reduced-by:{node.op}:{_name(node)}")
        _map_kept_axes(ctx, node, x, axes)

    return rule


def axis_frozen(default_axis: int, *, coerce_before: int | None = None) -> Rule:
    """Ops that mix positions along `axis` (Softmax, ArgMax, TopK, CumSum): the axis is frozen."""

    def rule(ctx: RuleContext, node: gs.Node) -> None:
        x = ctx.inp(node, 0)
        if x is None:
            ctx.freeze_node(node, "shapes-unknown")
            return
        r = len(x)
        if node.op == "CumSum":
            v = ctx.value(node, 1)
            axis = int(np.asarray(v).reshape(-1)[0]) if v is not None else None
            if axis is None:
                ctx.freeze_node(node, "cumsum-axis-unknown")
                return
        else:
            axis = int(_attr(node, "axis", default_axis))
        axis = _norm_axis(axis, r)
        mixed = [axis]
        if coerce_before is not None and ctx.opset < coerce_before:
            mixed = list(range(axis, r))
        for a in mixed:
            ctx.freeze(x[a], f"{node.op.lower()}-axis:{_name(node)}")
        if node.op in ("ArgMax", "ArgMin"):
            _map_kept_axes(ctx, node, x, [axis])
            return
        for j in range(len(node.outputs)):
            y = ctx.out(node, j)
            if y is None or len(y) != r:
                continue
            for k in range(r):
                if ctx.space.size(x[k]) == ctx.space.size(y[k]):
                    ctx.same(x[k], y[k], _name(node))

    return rule


def global_pool(ctx: RuleContext, node: gs.Node) -> None:
    """GlobalAveragePool etc.: batch and channels pass, spatial reduced to 1."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    for k in (0, 1):
        ctx.same(x[k], y[k], _name(node))


def pool(ctx: RuleContext, node: gs.Node) -> None:
    """MaxPool / AveragePool / LpPool: batch and channels pass; indices output freezes channels."""
    global_pool(ctx, node)
    if len(node.outputs) > 1 and ctx.is_used(node.outputs[1]):
        ctx.freeze_node(node, f"pool-indices:{_name(node)}")


# ---------------------------------------------------------------------- index maps
def concat(ctx: RuleContext, node: gs.Node) -> None:
    """Channel c of input k is channel off_k + c of the output."""
    y = ctx.out(node, 0)
    if y is None:
        return
    r = len(y)
    axis = _norm_axis(int(_attr(node, "axis")), r)
    parts = []
    for i in range(len(node.inputs)):
        x = ctx.inp(node, i)
        if x is None or len(x) != r:
            continue
        for k in range(r):
            if k != axis:
                ctx.same(x[k], y[k], _name(node))
        if ctx.space.size(x[axis]) > 0:
            parts.append(x[axis])
    if parts:
        ctx.same(y[axis], ctx.space.sum(parts), _name(node))


def split(ctx: RuleContext, node: gs.Node) -> None:
    """The inverse of Concat; the sizes (input, attribute or equal parts) are rewritten."""
    x = ctx.inp(node, 0)
    if x is None:
        return
    r = len(x)
    axis = _norm_axis(int(_attr(node, "axis", 0)), r)
    parts = []
    for j in range(len(node.outputs)):
        y = ctx.out(node, j)
        if y is None or len(y) != r:
            ctx.freeze_node(node, "split-shapes")
            return
        for k in range(r):
            if k != axis:
                ctx.same(x[k], y[k], _name(node))
        parts.append(y[axis])
    nonempty = [p for p in parts if ctx.space.size(p) > 0]
    if nonempty:
        ctx.same(x[axis], ctx.space.sum(nonempty), _name(node))
    ctx.slot(node, "split", 1, [size_req(p) for p in parts])


def slice_(ctx: RuleContext, node: gs.Node) -> None:
    """Contiguous slices of an axis: input = (before + output + after); bounds rewritten."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    sx = ctx.shape_in(node, 0)
    if x is None or y is None or sx is None:
        return
    r = len(x)
    starts, ends = ctx.value(node, 1), ctx.value(node, 2)
    axes_v = ctx.value(node, 3) if len(node.inputs) > 3 and node.inputs[3].name else None
    steps_v = ctx.value(node, 4) if len(node.inputs) > 4 and node.inputs[4].name else None
    if (
        starts is None
        or ends is None
        or (len(node.inputs) > 3 and node.inputs[3].name and axes_v is None)
    ):
        ctx.freeze_node(node, f"slice-bounds-unknown:{_name(node)}")
        return
    starts_l = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends_l = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = (
        [_norm_axis(int(a), r) for a in np.asarray(axes_v).reshape(-1)]
        if axes_v is not None
        else list(range(len(starts_l)))
    )
    steps = (
        [int(s) for s in np.asarray(steps_v).reshape(-1)]
        if steps_v is not None
        else [1] * len(starts_l)
    )
    sp = ctx.space
    start_req: list[Any] = []
    end_req: list[Any] = []
    refs: list[Term | None] = []
    for k in range(r):
        if k not in axes:
            ctx.same(x[k], y[k], _name(node))
    for s, e, a, st in zip(starts_l, ends_l, axes, steps, strict=False):
        n = sx[a]
        refs.append(x[a])
        if st != 1:
            if sp.size(y[a]) != n or st != -1:
                ctx.freeze([x[a], y[a]], f"strided-slice:{_name(node)}")
            else:
                ctx.freeze([x[a], y[a]], f"reversed-axis:{_name(node)}")
            start_req.append(None)
            end_req.append(None)
            continue
        s0 = min(max(s + n if s < 0 else s, 0), n)
        e0 = min(max(e + n if e < 0 else e, 0), n)
        mid = max(e0 - s0, 0)
        if mid == 0:
            ctx.freeze(x[a], f"empty-slice:{_name(node)}")
            start_req.append(None)
            end_req.append(None)
            continue
        pre = sp.new(s0) if s0 > 0 else None
        post = sp.new(n - e0) if e0 < n else None
        parts = [p for p in (pre, y[a], post) if p is not None]
        ctx.same(x[a], sp.sum(parts), _name(node))
        start_req.append(size_req(pre) if pre is not None else (0, ()))
        end_req.append(size_req(*(p for p in (pre, y[a]) if p is not None)))
    ctx.slot(node, "slice", 1, start_req, refs)
    ctx.slot(node, "slice", 2, end_req, refs)


def gather(ctx: RuleContext, node: gs.Node) -> None:
    """Gather: other data axes and the index axes map to the output; the gathered axis is cut
    at a constant scalar index, frozen for other constant indices, data-dependent otherwise."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    ind = ctx.inp(node, 1)
    if x is None or y is None or ind is None:
        return
    r = len(x)
    a = _norm_axis(int(_attr(node, "axis", 0)), r)
    ri = len(ind)
    for k in range(a):
        ctx.same(x[k], y[k], _name(node))
    for k in range(ri):
        ctx.same(ind[k], y[a + k], _name(node))
    for k in range(a + 1, r):
        ctx.same(x[k], y[k - 1 + ri], _name(node))
    idx = ctx.value(node, 1)
    n = ctx.space.size(x[a])
    if idx is None:
        ctx.freeze(x[a], f"gather-runtime-indices:{_name(node)}")
        return
    flat = [int(v) + n if int(v) < 0 else int(v) for v in np.asarray(idx).reshape(-1)]
    if ri == 0 and len(flat) == 1 and 0 <= flat[0] < n:
        i = flat[0]
        sp = ctx.space
        pre = sp.new(i) if i > 0 else None
        one = sp.new(1)
        post = sp.new(n - i - 1) if i + 1 < n else None
        ctx.same(x[a], sp.sum([p for p in (pre, one, post) if p is not None]), _name(node))
        ctx.slot(node, "values", 1, [size_req(pre) if pre is not None else (0, ())])
        return
    ctx.freeze(x[a], f"gather-indices:{_name(node)}")
    if ri:
        ctx.freeze(y[a : a + ri], f"gather-indices:{_name(node)}")


# ---------------------------------------------------------------------- layout
def _segments(sin: Sequence[int], sout: Sequence[int]) -> list[tuple[range, range]] | None:
    """Finest row-major alignment of two shapes with the same number of elements."""
    segs = []
    i = j = 0
    while i < len(sin) or j < len(sout):
        si, sj = i, j
        pi = pj = 1
        if i < len(sin):
            pi *= sin[i]
            i += 1
        if j < len(sout):
            pj *= sout[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(sin):
                pi *= sin[i]
                i += 1
            elif pj < pi and j < len(sout):
                pj *= sout[j]
                j += 1
            else:
                return None
        segs.append((range(si, i), range(sj, j)))
    return segs


def _reshape_terms(ctx: RuleContext, node: gs.Node, x: list[Term], y: list[Term]) -> bool:
    sp = ctx.space
    sin = [sp.size(t) for t in x]
    sout = [sp.size(t) for t in y]
    if 0 in sin or 0 in sout:
        ctx.freeze_node(node, "zero-size-reshape")
        return False
    segs = _segments(sin, sout)
    if segs is None:
        ctx.freeze_node(node, f"reshape-mismatch:{_name(node)}")
        return False
    for ri, ro in segs:
        a = sp.prod([x[k] for k in ri]) if len(ri) else sp.new(1)
        b = sp.prod([y[k] for k in ro]) if len(ro) else sp.new(1)
        ctx.same(a, b, f"reshape:{_name(node)}")
    return True


def reshape(ctx: RuleContext, node: gs.Node) -> None:
    """Row-major factor matching; the target's elements must equal the new output sizes."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        ctx.freeze_node(node, "reshape-shapes")
        return
    if not _reshape_terms(ctx, node, x, y):
        return
    ctx.slot(
        node,
        "reshape",
        1,
        [size_req(t) for t in y],
        [x[k] if k < len(x) else None for k in range(len(y))],
    )


def flatten(ctx: RuleContext, node: gs.Node) -> None:
    """(d0..d_{a-1}) and (d_a..) each become one axis."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    sp = ctx.space
    a = _norm_axis(int(_attr(node, "axis", 1)), len(x))
    ctx.same(y[0], sp.prod(x[:a]) if a else sp.new(1), _name(node))
    ctx.same(y[1], sp.prod(x[a:]) if a < len(x) else sp.new(1), _name(node))


def transpose(ctx: RuleContext, node: gs.Node) -> None:
    """Output axis i is input axis perm[i]."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    perm = _attr(node, "perm") or list(reversed(range(len(x))))
    for i, p in enumerate(perm):
        ctx.same(y[i], x[int(p)], _name(node))


def squeeze_like(ctx: RuleContext, node: gs.Node) -> None:
    """Squeeze / Unsqueeze: the non-unit axes keep their order."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    sp = ctx.space
    xs = [t for t in x if sp.size(t) != 1]
    ys = [t for t in y if sp.size(t) != 1]
    if len(xs) != len(ys):
        ctx.freeze_node(node, "squeeze-mismatch")
        return
    for a, b in zip(xs, ys, strict=False):
        ctx.same(a, b, _name(node))


def expand(ctx: RuleContext, node: gs.Node) -> None:
    """Broadcast to a shape: equal-size axes are the same, broadcast axes are new."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    sp = ctx.space
    off = len(y) - len(x)
    refs: list[Term | None] = []
    for k, t in enumerate(y):
        kx = k - off
        if kx >= 0:
            refs.append(x[kx])
            if sp.size(x[kx]) == sp.size(t):
                ctx.same(x[kx], t, _name(node))
        else:
            refs.append(None)
    ctx.slot(node, "expand", 1, [size_req(t) for t in y], refs)


def tile(ctx: RuleContext, node: gs.Node) -> None:
    """Tile: output axis = (repeats × input axis); the repeat index is not prunable."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    reps = ctx.value(node, 1)
    if x is None or y is None or reps is None:
        ctx.freeze_node(node, "tile-repeats-unknown")
        return
    sp = ctx.space
    for k, rep in enumerate(np.asarray(reps).reshape(-1)):
        if int(rep) == 1:
            ctx.same(x[k], y[k], _name(node))
        else:
            r = sp.new(int(rep), frozen=f"tile-repeats:{_name(node)}")
            ctx.same(y[k], sp.prod((r, x[k])), _name(node))


def depth_space(ctx: RuleContext, node: gs.Node) -> None:
    """DepthToSpace (DCR/CRD) and SpaceToDepth as reshape-transpose index maps."""
    sp = ctx.space
    b = int(_attr(node, "blocksize"))
    if node.op == "SpaceToDepth":
        x, y = ctx.out(node, 0), ctx.inp(node, 0)  # the same relation read backwards
        mode = "DCR"
    else:
        x, y = ctx.inp(node, 0), ctx.out(node, 0)
        mode = str(_attr(node, "mode", "DCR"))
    if x is None or y is None or len(x) != 4:
        ctx.freeze_node(node, "depth-space-shapes")
        return
    b1, b2, c = sp.new(b), sp.new(b), sp.new(sp.size(x[1]) // (b * b))
    ctx.same(x[1], sp.prod((b1, b2, c) if mode == "DCR" else (c, b1, b2)), _name(node))
    ctx.same(y[0], x[0], _name(node))
    ctx.same(y[1], c, _name(node))
    ctx.same(y[2], sp.prod((x[2], b1)), _name(node))
    ctx.same(y[3], sp.prod((x[3], b2)), _name(node))


def constant_of_shape(ctx: RuleContext, node: gs.Node) -> None:
    """The shape input must equal the (new) output sizes."""
    y = ctx.out(node, 0)
    if y is not None:
        ctx.slot(node, "values", 0, [size_req(t) for t in y])


def resize(ctx: RuleContext, node: gs.Node) -> None:
    """Axes whose size is unchanged pass through; a `sizes` input is rewritten."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    sp = ctx.space
    for a, b in zip(x, y, strict=False):
        if sp.size(a) == sp.size(b):
            ctx.same(a, b, _name(node))
        else:
            ctx.freeze([a, b], f"resized-axis:{_name(node)}")
    if len(node.inputs) > 3 and node.inputs[3].name:
        ctx.slot(node, "values", 3, [size_req(t) for t in y])


def pad(ctx: RuleContext, node: gs.Node) -> None:
    """Unpadded axes pass through; a constant-padded axis is (pad + input + pad)."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    r = len(x)
    if len(node.inputs) > 1 and node.inputs[1].name:
        pads = ctx.value(node, 1)
    else:
        pads = _attr(node, "pads")
    axes_v = ctx.value(node, 3) if len(node.inputs) > 3 and node.inputs[3].name else None
    if pads is None:
        ctx.freeze_node(node, f"pads-unknown:{_name(node)}")
        return
    pads_l = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = (
        [_norm_axis(int(a), r) for a in np.asarray(axes_v).reshape(-1)]
        if axes_v is not None
        else list(range(r))
    )
    n = len(axes)
    by_axis = {a: (pads_l[i], pads_l[i + n]) for i, a in enumerate(axes)}
    mode = str(_attr(node, "mode", "constant"))
    sp = ctx.space
    for k in range(r):
        p0, p1 = by_axis.get(k, (0, 0))
        if p0 == 0 and p1 == 0:
            ctx.same(x[k], y[k], _name(node))
        elif mode == "constant" and p0 >= 0 and p1 >= 0:
            parts = []
            if p0:
                parts.append(sp.new(p0, frozen=f"padding:{_name(node)}"))
            parts.append(x[k])
            if p1:
                parts.append(sp.new(p1, frozen=f"padding:{_name(node)}"))
            ctx.same(y[k], sp.sum(parts), _name(node))
        else:
            ctx.freeze([x[k], y[k]], f"padded-axis:{_name(node)}")


def trilu(ctx: RuleContext, node: gs.Node) -> None:
    """Elementwise, but the kept positions depend on the last two indices."""
    unary(ctx, node)
    x = ctx.inp(node, 0)
    if x is not None:
        ctx.freeze(x[-2:], f"trilu:{_name(node)}")


def dropout(ctx: RuleContext, node: gs.Node) -> None:
    """Identity at inference; the mask output has the input's axes."""
    x = ctx.inp(node, 0)
    for j in range(len(node.outputs)):
        y = ctx.out(node, j)
        if x is not None and y is not None:
            for a, b in zip(x, y, strict=False):
                ctx.same(a, b, _name(node))


def qdq(ctx: RuleContext, node: gs.Node) -> None:
    """(De)QuantizeLinear: elementwise, per-axis scale and zero point on `axis`."""
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        return
    for a, b in zip(x, y, strict=False):
        ctx.same(a, b, _name(node))
    axis = _norm_axis(int(_attr(node, "axis", 1)), len(x))
    for i in (1, 2):
        p = ctx.inp(node, i)
        if p is not None and len(p) == 1 and ctx.space.size(p[0]) > 1:
            ctx.same(p[0], x[axis], _name(node))
        elif p is not None and len(p) > 1:
            ctx.freeze_node(node, "blocked-quantization")


UNARY_OPS = (
    "Relu",
    "LeakyRelu",
    "PRelu_",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Mish",
    "Erf",
    "Abs",
    "Neg",
    "Identity",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Not",
    "Cast",
    "IsNaN",
    "IsInf",
    "Shrink",
    "ThresholdedRelu",
    "BitwiseNot",
    "Swish",
)

BROADCAST_OPS = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Mean",
    "Sum",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Where",
    "PRelu",
    "Mod",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "Clip",
    "CastLike",
)

#: The registry: op_type (default domain) or "domain:op_type" -> rule.
RULES: dict[str, Rule] = {
    **{op: unary for op in UNARY_OPS if not op.endswith("_")},
    **{op: elementwise for op in BROADCAST_OPS},
    "Dropout": dropout,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "MatMul": matmul,
    "Gemm": gemm,
    "Einsum": einsum,
    "Attention": attention,
    "BatchNormalization": batchnorm,
    "InstanceNormalization": instancenorm,
    "LayerNormalization": layernorm,
    "RMSNormalization": layernorm,
    "GroupNormalization": groupnorm,
    "LRN": lrn,
    "ReduceMean": reduction("reduce"),
    "ReduceL2": reduction("reduce"),
    "ReduceSumSquare": reduction("reduce"),
    "ReduceSum": reduction("freeze"),
    "ReduceMax": reduction("freeze"),
    "ReduceMin": reduction("freeze"),
    "ReduceProd": reduction("freeze"),
    "ReduceL1": reduction("freeze"),
    "ReduceLogSum": reduction("freeze"),
    "ReduceLogSumExp": reduction("freeze"),
    "Softmax": axis_frozen(-1, coerce_before=13),
    "LogSoftmax": axis_frozen(-1, coerce_before=13),
    "Hardmax": axis_frozen(-1, coerce_before=13),
    "ArgMax": axis_frozen(0),
    "ArgMin": axis_frozen(0),
    "TopK": axis_frozen(-1),
    "CumSum": axis_frozen(0),
    "GlobalAveragePool": global_pool,
    "GlobalMaxPool": global_pool,
    "GlobalLpPool": global_pool,
    "MaxPool": pool,
    "AveragePool": pool,
    "LpPool": pool,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": transpose,
    "Squeeze": squeeze_like,
    "Unsqueeze": squeeze_like,
    "Expand": expand,
    "Tile": tile,
    "DepthToSpace": depth_space,
    "SpaceToDepth": depth_space,
    "ConstantOfShape": constant_of_shape,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "Trilu": trilu,
    "QuantizeLinear": qdq,
    "DequantizeLinear": qdq,
    "Shape": nothing,
    "Size": nothing,
    "Constant": nothing,
    "Range": frozen_outputs("range"),
    "GatherElements": data_dependent,
    "GatherND": data_dependent,
    "ScatterND": data_dependent,
    "ScatterElements": data_dependent,
    "Scatter": data_dependent,
    "NonZero": data_dependent,
    "Compress": data_dependent,
    "Unique": data_dependent,
    "OneHot": data_dependent,
    "com.microsoft:FastGelu": elementwise,
    "com.microsoft:SkipLayerNormalization": skip_layernorm,
    "com.microsoft:SkipSimplifiedLayerNormalization": skip_layernorm,
    "com.microsoft:SimplifiedLayerNormalization": layernorm,
    "com.microsoft:LayerNormalization": layernorm,
    "com.microsoft:BiasGelu": elementwise,
    "com.microsoft:Gelu": unary,
    "com.microsoft:QuickGelu": unary,
}


def rule_for(node: gs.Node, rules: dict[str, Rule] | None = None) -> Rule | None:
    """The rule of a node's op (None: unknown op)."""
    table = RULES if rules is None else rules
    dom = node.domain or ""
    key = node.op if dom in ("", "ai.onnx") else f"{dom}:{node.op}"
    return table.get(key)


def _custom_op_rules() -> dict[str, Rule]:
    """The rules of the project's own ops (runtime_ops, domain spa.ops), keyed "spa.ops:<op>"."""
    from spa_compiler.runtime_ops import channel_rules

    return channel_rules()


RULES.update(_custom_op_rules())

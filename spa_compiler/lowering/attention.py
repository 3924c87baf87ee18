"""Scaled dot-product attention -> ONNX Runtime's fused `MultiHeadAttention` (com.microsoft).

Before (per attention block, any exporter; Q4, V4: (B, H, S|T, D), KT: (B, H, D, T)):

    scores = MatMul(Q4 [* c_q], KT [* c_k]) [/ c | * c]
    scores = scores + bias            (additive padding/causal mask, any broadcastable shape)
           | Where(cond, scores, fill) | Where(cond, fill, scores)   (boolean masks)
    P      = Softmax(scores, axis=-1)
    O4     = MatMul(P, V4)
    Y      = Reshape(Transpose(O4, (0, 2, 1, 3)), (B, S, H*D))

After:

    Y = MultiHeadAttention(query, key, value, attention_bias=bias4, num_heads=H, scale=c_q*c_k/c)

with query (B, S, H*D): the projection before its head split when the graph splits it directly,
else Q4 transposed back; key/value (B, T, H*D) likewise, or as (B, H, T, D) tensors (ORT's
"BNSH" key/value form) when something sits between the head split and the product: RoPE,
the repeat of grouped-query KV heads. So whatever produced Q4/K4/V4 (rotary embeddings included)
stays as it was and only the attention core is fused. Masks become one additive bias
(B|1, H|1, S, T): boolean masks through Where(cond, 0, fill), lower ranks unsqueezed, size-1 query
or key axes expanded.

H comes from the static shape of Q4 at the compile's input shapes, per block: a model whose layers
keep different numbers of heads (what the pruning search produces) gets a node per layer with its
own count. A block that does not match exactly is left alone and counted with the reason.
"""

from __future__ import annotations

import collections
import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.prod: dict[str, onnx.NodeProto] = {o: n for n in self.g.node for o in n.output if o}
        self.cons: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.cons[i].append(n)
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self.taken = set(self.prod) | set(self.inits) | {i.name for i in self.g.input}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.prod.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.asarray(a.f, dtype=np.float32)
                if a.name == "value_floats":
                    return np.asarray(list(a.floats), dtype=np.float32)
                if a.name == "value_int":
                    return np.asarray(a.i, dtype=np.int64)
                if a.name == "value_ints":
                    return np.asarray(list(a.ints), dtype=np.int64)
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1 or not np.issubdtype(v.dtype, np.floating):
            return None
        return float(v.reshape(()))

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        c = self.cons.get(name, [])
        if len(c) != 1 or name in self.outputs:
            return None
        return c[0]


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _perm(node: onnx.NodeProto | None) -> tuple[int, ...] | None:
    if node is None or node.op_type != "Transpose":
        return None
    p = _attr(node, "perm")
    return tuple(int(x) for x in p) if p is not None else None


class _Miss(Exception):
    """A block that does not match; the message is the reason counted."""


def _scaled(G: _Graph, name: str) -> tuple[str, float]:
    """Strip Mul-by-scalar-constant off `name`; (tensor, factor)."""
    n = G.prod.get(name)
    if n is not None and n.op_type == "Mul":
        for i in (0, 1):
            c = G.scalar(n.input[1 - i])
            if c is not None:
                return n.input[i], c
    return name, 1.0


def _match(
    G: _Graph, sm: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    rank = len(shapes.get(sm.input[0], ()))
    axis = int(_attr(sm, "axis", -1 if G.opset >= 13 else 1))
    if rank != 4 or axis not in (-1, 3):
        raise _Miss("softmax-not-last-axis-of-4d")
    p = sm.output[0]
    pv = G.only_consumer(p)
    while pv is not None and pv.op_type == "Cast" and _attr(pv, "to") == onnx.TensorProto.FLOAT:
        p = pv.output[0]  # softmax(..., dtype=float32).to(float32): a no-op on a float32 model
        pv = G.only_consumer(p)
    if pv is None or pv.op_type != "MatMul" or pv.input[0] != p:
        raise _Miss("softmax-not-into-matmul")
    # scores path: masks, then scale, then Q @ K^T
    biases: list[tuple[str, Any]] = []
    x = sm.input[0]
    for _ in range(3):
        n = G.prod.get(x)
        if n is None:
            raise _Miss("scores-not-computed")
        if n.op_type == "Add":
            a, b = n.input
            na, nb = G.prod.get(a), G.prod.get(b)
            if na is not None and na.op_type in ("MatMul", "Div", "Mul", "Add", "Where"):
                scores, bias = a, b
            elif nb is not None and nb.op_type in ("MatMul", "Div", "Mul", "Add", "Where"):
                scores, bias = b, a
            else:
                raise _Miss("add-without-scores")
            if len(G.cons[x]) != 1:
                raise _Miss("scores-shared")
            biases.append(("add", bias))
            x = scores
        elif n.op_type == "Where":
            cond, a, b = n.input
            fa, fb = G.scalar(a), G.scalar(b)
            if fb is not None and fa is None:
                biases.append(("where", (cond, None, fb)))  # keep where cond, else fill
                x = a
            elif fa is not None and fb is None:
                biases.append(("where", (cond, fa, None)))  # fill where cond, else keep
                x = b
            else:
                raise _Miss("where-without-constant-fill")
            if len(G.cons[n.output[0]]) != 1:
                raise _Miss("scores-shared")
        else:
            break
    scale = 1.0
    n = G.prod.get(x)
    if n is not None and n.op_type == "Div":
        c = G.scalar(n.input[1])
        if c is None or c == 0:
            raise _Miss("scale-not-constant")
        scale /= c
        x = n.input[0]
    elif n is not None and n.op_type == "Mul":
        x, c = _scaled(G, x)
        if c == 1.0 and G.prod.get(x) is n:
            raise _Miss("scale-not-constant")
        scale *= c
    qk = G.prod.get(x)
    if qk is None or qk.op_type != "MatMul":
        raise _Miss("no-q-k-matmul")
    if G.only_consumer(x) is None:
        raise _Miss("scores-shared")
    q4, cq = _scaled(G, qk.input[0])
    kt, ck = _scaled(G, qk.input[1])
    scale *= cq * ck
    v4 = pv.input[1]
    sq, sk, sv = shapes.get(q4), shapes.get(kt), shapes.get(v4)
    if not (sq and sk and sv) or len(sq) != 4 or len(sk) != 4 or len(sv) != 4:
        raise _Miss("q-k-v-not-4d")
    b, h, s, d = sq
    if sk[0] != b or sk[1] != h or sk[2] != d or sv[0] != b or sv[1] != h or sv[2] != sk[3]:
        raise _Miss("q-k-v-shapes-disagree")
    # output: Transpose(0,2,1,3) then Reshape to (B, S, H*Dv)
    tr = G.only_consumer(pv.output[0])
    if _perm(tr) != (0, 2, 1, 3):
        raise _Miss("output-not-transposed-to-bsnh")
    rs = G.only_consumer(tr.output[0])
    dv = sv[3]
    if rs is None or rs.op_type != "Reshape" or shapes.get(rs.output[0]) != (b, s, h * dv):
        raise _Miss("output-not-reshaped-to-bsh")
    return dict(sm=sm, pv=pv, qk=qk, q4=q4, kt=kt, v4=v4, heads=h, head_dim=d, scale=scale,
                biases=biases, out=rs.output[0], rs=rs, shapes=(sq, sk, sv))


def _bsh_source(G: _Graph, t4: str, perm: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The (B, S, H*D) tensor that `t4` is a head split of (Reshape -> Transpose(perm)), if so."""
    tr = G.prod.get(t4)
    if _perm(tr) != perm:
        return None
    rs = G.prod.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape":
        return None
    src = rs.input[0]
    s4, s3 = shapes.get(rs.output[0]), shapes.get(src)
    if not s4 or not s3 or len(s3) != 3 or len(s4) != 4 or s3[2] != s4[2] * s4[3] or s3[:2] != s4[:2]:
        return None
    return src


def _emit(G: _Graph, m: dict[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[onnx.NodeProto]:
    new: list[onnx.NodeProto] = []
    sq, sk, sv = m["shapes"]
    base = m["sm"].name or m["out"]

    def node(op: str, ins: list[str], **attrs: Any) -> str:
        out = G.fresh(f"{base}__mha_{op.lower()}")
        new.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def const(values: np.ndarray, hint: str) -> str:
        name = G.fresh(f"{base}__mha_{hint}")
        G.g.initializer.append(numpy_helper.from_array(values, name=name))
        return name

    query = _bsh_source(G, m["q4"], (0, 2, 1, 3), shapes)
    if query is None:
        query = node("Reshape", [node("Transpose", [m["q4"]], perm=[0, 2, 1, 3]),
                                 const(np.array([0, 0, -1], np.int64), "bsh")])
    key = _bsh_source(G, m["kt"], (0, 2, 3, 1), shapes)
    k4 = None
    if key is None and _perm(G.prod.get(m["kt"])) == (0, 1, 3, 2):
        k4 = G.prod[m["kt"]].input[0]
        key = _bsh_source(G, k4, (0, 2, 1, 3), shapes)
    value = _bsh_source(G, m["v4"], (0, 2, 1, 3), shapes)
    if key is None or value is None:  # BNSH key and value (both or neither)
        key = k4 if k4 is not None else node("Transpose", [m["kt"]], perm=[0, 1, 3, 2])
        value = m["v4"]
        key_seq_axis = 2
    else:
        key_seq_axis = 1
    # masks -> one additive bias (B|1, H|1, S, T)
    bias = ""
    for kind, what in m["biases"]:
        if kind == "add":
            t = what
        else:
            cond, fill_true, fill_false = what
            zero = np.zeros((), np.float32)
            a = const(zero if fill_true is None else np.asarray(fill_true, np.float32), "keep")
            b = const(zero if fill_false is None else np.asarray(fill_false, np.float32), "fill")
            t = node("Where", [cond, a, b])
        bias = t if not bias else node("Add", [bias, t])
    if bias:
        r = len(shapes.get(bias, ())) if bias in shapes else None
        if r is None:
            r = _rank_of_new(m, G, shapes)
        if r is None or r > 4:
            raise _Miss("mask-rank-unknown")
        if r < 4:
            bias = node("Unsqueeze", [bias, const(np.arange(4 - r, dtype=np.int64), "axes")])
        shp = shapes.get(bias)
        if shp is None or shp[2] != sq[2] or shp[3] != sk[3]:
            if G.opset < 15:
                raise _Miss("opset-below-15")
            s_ = node("Shape", [query], start=1, end=2)
            t_ = node("Shape", [key], start=key_seq_axis, end=key_seq_axis + 1)
            target = node("Concat", [const(np.array([1, 1], np.int64), "ones"), s_, t_], axis=0)
            bias = node("Expand", [bias, target])
        shp_b = shapes.get(m["biases"][0][1]) if m["biases"][0][0] == "add" else None
        if shp_b is not None and len(shp_b) == 4 and shp_b[1] not in (1, m["heads"]):
            raise _Miss("mask-head-axis")
    ins = [query, key, value, "", "", bias] if bias else [query, key, value]
    new.append(helper.make_node("MultiHeadAttention", ins, [m["out"]], name=G.fresh(f"{base}__mha"),
                                domain=MS_DOMAIN, num_heads=int(m["heads"]), scale=float(m["scale"])))
    return new


def _rank_of_new(m: dict[str, Any], G: _Graph, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Rank of a Where-built mask: the broadcast of its condition's rank and the scores' 4."""
    ranks = []
    for kind, what in m["biases"]:
        src = what if kind == "add" else what[0]
        if src not in shapes:
            return None
        ranks.append(len(shapes[src]))
    return max(ranks) if ranks else None


def fuse_mha(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[onnx.ModelProto, dict[str, int], dict[str, int]]:
    """A copy of `model` with every matching attention block fused; (model, fused, skipped).

    `shapes`: static shape of every tensor of `model` at the compile's input shapes.
    """
    work = copy.deepcopy(model)
    G = _Graph(work)
    skipped: dict[str, int] = collections.Counter()
    replaced: dict[str, list[onnx.NodeProto]] = {}
    fused = 0
    for sm in [n for n in G.g.node if n.op_type == "Softmax"]:
        try:
            m = _match(G, sm, shapes)
            nodes = _emit(G, m, shapes)
        except _Miss as e:
            skipped[str(e)] += 1
            continue
        replaced[m["rs"].output[0]] = nodes
        fused += 1
    if not fused:
        return model, {}, dict(skipped)
    order: list[onnx.NodeProto] = []
    for n in G.g.node:
        if n.output and n.output[0] in replaced:
            order.extend(replaced.pop(n.output[0]))  # the block's output Reshape -> the fused node
        else:
            order.append(n)
    del G.g.node[:]
    G.g.node.extend(order)
    _dead_code(work)
    _toposort(work)
    if not any(o.domain == MS_DOMAIN for o in work.opset_import):
        work.opset_import.add(domain=MS_DOMAIN, version=1)
    return work, {"MultiHeadAttention": fused}, dict(skipped)


def _dead_code(model: onnx.ModelProto) -> None:
    g = model.graph
    live = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
            for a in n.attribute:  # outer-scope names read by subgraphs
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    for sn in sub.node:
                        live.update(i for i in sn.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = live
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in used]
    del g.value_info[:]
    g.value_info.extend(vis)


def _toposort(model: onnx.ModelProto) -> None:
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or outer-scope input: keep the given order
            out.extend(rest)
            break
        pending = rest
    del g.node[:]
    g.node.extend(out)

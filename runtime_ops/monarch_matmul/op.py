"""MonarchMatMul (domain spa.ops, version 1): schema, shape inference, channel rule, cost model.

    Y (..., N) = X (..., K) @ M.T (+ bias),  M = P L P R  given by its factors
    R (b, b*r, kb) and L (b, nq, b*r), K = b*kb, N = nq*b

The index convention is `reference.py`'s (README.md states it in words). Everything here is plain
functions so the core can register them: `schema()` (for `onnx.defs.register_schema`),
`infer_shapes` (the schema's inference function), `channel_rule` (the group analysis' rule
protocol, `spa_compiler.channel_rules.RuleContext`), `node_macs` / `node_bytes` (the analytic
latency provider's per-node numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, defs

from ..common.schema import (
    DOMAIN,
    InferenceError,
    check_equal,
    input_dims,
    input_elem_type,
    plugin_attributes,
    set_output,
)

OP_TYPE = "MonarchMatMul"
VERSION = 1
#: Element types the op accepts (all four tensors share one).
TYPES = ("tensor(float)", "tensor(float16)")

DOC = """Y = X @ M^T (+ bias) where M (N, K) is a Monarch matrix given by two block-diagonal factors:
R (b, b*r, kb) and L (b, nq, b*r) with K = b*kb and N = nq*b. Stage 1 applies R block by block to X
(input index j*kb+s), stage 2 applies L to the permuted intermediate, and the output index is
q*b+t for row q of L's block t: M[q*b+t, j*kb+s] = sum_rho L[t,q,j*r+rho] * R[j,t*r+rho,s]."""


def infer_shapes(ctx: onnx.shape_inference.InferenceContext) -> None:
    """Y: X's leading dims + [N] with N = L.shape[0] * L.shape[1]; checks K, b and r."""
    elem = input_elem_type(ctx, 0)
    for i in (1, 2, 3):
        e = input_elem_type(ctx, i)
        if elem and e and e != elem:
            raise InferenceError(f"{OP_TYPE}: input {i} has element type {e}, X has {elem}")
    x, r, l_ = input_dims(ctx, 0), input_dims(ctx, 1), input_dims(ctx, 2)
    for name, d in (("R", r), ("L", l_)):
        if d is not None and len(d) != 3:
            raise InferenceError(f"{OP_TYPE}: {name} must be rank 3, got rank {len(d)}")
    if x is not None and len(x) < 1:
        raise InferenceError(f"{OP_TYPE}: X must have rank >= 1")
    n: int | None = None
    if r is not None and l_ is not None:
        check_equal(f"{OP_TYPE}: blocks of R and L (R.shape[0], L.shape[0])", r[0], l_[0])
        check_equal(f"{OP_TYPE}: R.shape[1] and L.shape[2]", r[1], l_[2])
        b, br = r[0], r[1]
        if isinstance(b, int) and isinstance(br, int) and (b < 1 or br < b or br % b):
            raise InferenceError(
                f"{OP_TYPE}: R.shape[1] ({br}) must be a positive multiple of b ({b})"
            )
        if x is not None and isinstance(b, int) and isinstance(r[2], int):
            check_equal(f"{OP_TYPE}: X's last axis and b * R.shape[2]", x[-1], b * r[2])
    if l_ is not None and isinstance(l_[0], int) and isinstance(l_[1], int):
        n = l_[0] * l_[1]
    bias = input_dims(ctx, 3)
    if bias is not None:
        if len(bias) != 1:
            raise InferenceError(f"{OP_TYPE}: bias must be rank 1, got rank {len(bias)}")
        check_equal(f"{OP_TYPE}: bias length and N", bias[0], n)
    dims = None if x is None else [*x[:-1], n]
    set_output(ctx, 0, elem, dims)


def schema() -> defs.OpSchema:
    """The ONNX OpSchema (register with `onnx.defs.register_schema`)."""
    p = defs.OpSchema.FormalParameter
    opt = defs.OpSchema.FormalParameterOption.Optional
    s = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        VERSION,
        DOC,
        inputs=[
            p("X", "T", "input (..., K), K = b * kb"),
            p("R", "T", "first factor (b, b*r, kb): b blocks of (b*r) x kb"),
            p("L", "T", "second factor (b, nq, b*r): b blocks of nq x (b*r)"),
            p("bias", "T", "optional bias (N,), N = nq * b", param_option=opt),
        ],
        outputs=[p("Y", "T", "output (..., N)")],
        type_constraints=[("T", list(TYPES), "float32 or float16")],
        attributes=plugin_attributes(),
    )
    s.set_type_and_shape_inference_function(infer_shapes)
    return s


def make_node(
    x: str, r: str, l_: str, y: str, bias: str | None = None, name: str | None = None
) -> onnx.NodeProto:
    """A MonarchMatMul NodeProto (domain spa.ops)."""
    inputs = [x, r, l_] + ([bias] if bias else [])
    return onnx.helper.make_node(OP_TYPE, inputs, [y], name=name, domain=DOMAIN)


# ---------------------------------------------------------------------- channel rule
def channel_rule(ctx: Any, node: Any) -> None:
    """Group-analysis rule (`spa_compiler.channel_rules.Rule` protocol) for a MonarchMatMul node.

    Leading (batch) axes of X and Y are the same index space. X's last axis (K) and Y's last axis
    (N) are frozen: removing one input or output channel breaks K = b * kb or N = nq * b, and the
    block structure has no smaller prunable unit than a whole re-factorisation. So the op ends
    every group that reaches it and starts a frozen one. The factor and bias axes are frozen too.
    """
    name = node.name or node.op
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        ctx.freeze_node(node, f"monarch-shapes-unknown:{name}")
        return
    for a, b in zip(x[:-1], y[:-1], strict=True):
        ctx.same(a, b, name)
    ctx.freeze(x[-1], f"monarch-block-structure:{name}")
    ctx.freeze(y[-1], f"monarch-block-structure:{name}")
    for i in (1, 2, 3):
        t = ctx.inp(node, i)
        if t:
            ctx.freeze(t, f"monarch-factor:{name}")


# ---------------------------------------------------------------------- cost model
def macs(x_shape: Sequence[int], r_shape: Sequence[int], l_shape: Sequence[int]) -> int:
    """Multiply-accumulates: rows * (b*r*K + b*r*N) (stage 1 plus stage 2)."""
    rows = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    b, br, kb = (int(v) for v in r_shape)
    nq = int(l_shape[1])
    return rows * br * (b * kb + nq * b)


def bytes_moved(
    x_shape: Sequence[int],
    r_shape: Sequence[int],
    l_shape: Sequence[int],
    *,
    has_bias: bool,
    elem_bytes: int,
) -> int:
    """The fewest bytes a fused kernel moves: X read, Y written, R, L (and bias) read once."""
    rows = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    k = int(x_shape[-1])
    n = int(l_shape[0]) * int(l_shape[1])
    weights = int(np.prod(r_shape)) + int(np.prod(l_shape)) + (n if has_bias else 0)
    return elem_bytes * (rows * (k + n) + weights)


def _shapes(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]]) -> list[Any] | None:
    got = [shapes.get(n) for n in list(node.input)[:3]]
    if any(s is None or any(not isinstance(d, int) or d < 0 for d in s) for s in got):
        return None
    return got


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]]) -> int | None:
    """MACs of one node given static shapes by tensor name (None when a shape is unknown);
    the same signature as `spa_compiler.stats.node_macs`."""
    got = _shapes(node, shapes)
    return None if got is None else macs(*got)


def node_bytes(
    node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]], elem_bytes: int
) -> int | None:
    """Bytes moved by one node (fused-kernel floor), None when a shape is unknown."""
    got = _shapes(node, shapes)
    if got is None:
        return None
    has_bias = len(node.input) > 3 and bool(node.input[3])
    return bytes_moved(*got, has_bias=has_bias, elem_bytes=elem_bytes)


ELEM_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}

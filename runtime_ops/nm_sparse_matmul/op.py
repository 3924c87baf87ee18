"""NMSparseMatMul (domain spa.ops, version 1): schema, shape inference, channel rule, cost model.

    Y (..., N) = X (..., K) @ W.T (+ bias),  W (N, K) 2:4-sparse along K, stored compressed as
    values (N, K/2) and meta (N, K/8) uint8 (format: `reference.py`)

Plain functions for the core to register: `schema()`, `infer_shapes`, `channel_rule` (the group
analysis' rule protocol), `node_macs` / `node_bytes` (analytic latency provider).
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

OP_TYPE = "NMSparseMatMul"
VERSION = 1
TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")

DOC = """Y = X @ W^T (+ bias) for a 2:4 structured-sparse W (N, K) (at most 2 non-zeros in every 4
consecutive entries along K), stored as values (N, K/2) and 4-bit-per-group metadata meta (N, K/8)
uint8: group g's code sits in byte g//2 (low nibble for even g) and is i0 | i1<<2, the kept
columns 0 <= i0 < i1 <= 3 of that group; values[n, 2g] and values[n, 2g+1] are W[n, 4g+i0] and
W[n, 4g+i1]. K must be a multiple of 8."""


def infer_shapes(ctx: onnx.shape_inference.InferenceContext) -> None:
    """Y: X's leading dims + [N]; checks K = 2 * values.shape[1] = 8 * meta.shape[1] and N."""
    elem = input_elem_type(ctx, 0)
    for i in (1, 3):
        e = input_elem_type(ctx, i)
        if elem and e and e != elem:
            raise InferenceError(f"{OP_TYPE}: input {i} has element type {e}, X has {elem}")
    m = input_elem_type(ctx, 2)
    if m and m != TensorProto.UINT8:
        raise InferenceError(f"{OP_TYPE}: meta must be uint8, got element type {m}")
    x, v, md = input_dims(ctx, 0), input_dims(ctx, 1), input_dims(ctx, 2)
    if x is not None and len(x) < 1:
        raise InferenceError(f"{OP_TYPE}: X must have rank >= 1")
    for name, d in (("values", v), ("meta", md)):
        if d is not None and len(d) != 2:
            raise InferenceError(f"{OP_TYPE}: {name} must be rank 2, got rank {len(d)}")
    n = v[0] if v is not None else (md[0] if md is not None else None)
    if v is not None and md is not None:
        check_equal(f"{OP_TYPE}: rows of values and meta", v[0], md[0])
        if isinstance(v[1], int) and isinstance(md[1], int):
            check_equal(f"{OP_TYPE}: values.shape[1] and 4 * meta.shape[1]", v[1], 4 * md[1])
    if v is not None and isinstance(v[1], int):
        if v[1] % 4:
            raise InferenceError(
                f"{OP_TYPE}: K = 2 * values.shape[1] = {2 * v[1]} is not a multiple of 8"
            )
        if x is not None:
            check_equal(f"{OP_TYPE}: X's last axis and K = 2 * values.shape[1]", x[-1], 2 * v[1])
    bias = input_dims(ctx, 3)
    if bias is not None:
        if len(bias) != 1:
            raise InferenceError(f"{OP_TYPE}: bias must be rank 1, got rank {len(bias)}")
        check_equal(f"{OP_TYPE}: bias length and N", bias[0], n)
    set_output(ctx, 0, elem, None if x is None else [*x[:-1], n])


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
            p("X", "T", "input (..., K), K a multiple of 8"),
            p("values", "T", "kept weights (N, K/2), two per group of 4"),
            p("meta", "tensor(uint8)", "positions (N, K/8): one 4-bit code per group"),
            p("bias", "T", "optional bias (N,)", param_option=opt),
        ],
        outputs=[p("Y", "T", "output (..., N)")],
        type_constraints=[("T", list(TYPES), "float32, float16 or bfloat16")],
        attributes=plugin_attributes(),
    )
    s.set_type_and_shape_inference_function(infer_shapes)
    return s


def make_node(
    x: str, values: str, meta: str, y: str, bias: str | None = None, name: str | None = None
) -> onnx.NodeProto:
    """An NMSparseMatMul NodeProto (domain spa.ops)."""
    inputs = [x, values, meta] + ([bias] if bias else [])
    return onnx.helper.make_node(OP_TYPE, inputs, [y], name=name, domain=DOMAIN)


# ---------------------------------------------------------------------- channel rule
def channel_rule(ctx: Any, node: Any) -> None:
    """Group-analysis rule (`spa_compiler.channel_rules.Rule` protocol) for an NMSparseMatMul node.

    Leading axes of X and Y are joined. X's last axis (K) is frozen: removing input channels would
    break the groups of 4 the metadata indexes. Y's last axis (N) is joined with the rows of
    `values`, `meta` and `bias`, so output channels are prunable like a dense MatMul's (a row of
    values + meta + bias goes per channel); hardware kernels prefer N a multiple of 16.
    """
    name = node.name or node.op
    x, y = ctx.inp(node, 0), ctx.out(node, 0)
    if x is None or y is None:
        ctx.freeze_node(node, f"nm-shapes-unknown:{name}")
        return
    for a, b in zip(x[:-1], y[:-1], strict=True):
        ctx.same(a, b, name)
    ctx.freeze(x[-1], f"nm-2:4-groups-along-K:{name}")
    for i in (1, 2):
        t = ctx.inp(node, i)
        if t:
            ctx.same(y[-1], t[0], name)
            ctx.freeze(t[1], f"nm-2:4-groups-along-K:{name}")
    bias = ctx.inp(node, 3)
    if bias:
        ctx.same(y[-1], bias[0], name)


# ---------------------------------------------------------------------- cost model
def macs(x_shape: Sequence[int], values_shape: Sequence[int]) -> int:
    """Multiply-accumulates actually needed: rows * N * K / 2 (half of dense)."""
    rows = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    return rows * int(values_shape[0]) * int(values_shape[1])


def bytes_moved(
    x_shape: Sequence[int], values_shape: Sequence[int], *, has_bias: bool, elem_bytes: int
) -> int:
    """Fewest bytes: X read, Y written, values (+ bias) read, meta read (K/8 bytes per row)."""
    rows = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    n, half = int(values_shape[0]), int(values_shape[1])
    k = 2 * half
    return elem_bytes * (rows * (k + n) + n * half + (n if has_bias else 0)) + n * (k // 8)


def _shapes(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]]) -> list[Any] | None:
    got = [shapes.get(n) for n in list(node.input)[:2]]
    if any(s is None or any(not isinstance(d, int) or d < 0 for d in s) for s in got):
        return None
    return got


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]]) -> int | None:
    """MACs of one node (None when a shape is unknown); `spa_compiler.stats.node_macs` signature."""
    got = _shapes(node, shapes)
    return None if got is None else macs(*got)


def node_bytes(
    node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]], elem_bytes: int
) -> int | None:
    """Bytes moved by one node, None when a shape is unknown."""
    got = _shapes(node, shapes)
    if got is None:
        return None
    has_bias = len(node.input) > 3 and bool(node.input[3])
    return bytes_moved(*got, has_bias=has_bias, elem_bytes=elem_bytes)

"""Model statistics for reports: parameters and multiply-accumulates (MACs) per op and in total."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from spa_compiler.ir import ModelIR
from spa_compiler.protos import stripped_large_tensors

#: Op types whose MACs are counted (the dense linear algebra pruning shrinks).
COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shapes(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [
                d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                for d in vi.type.tensor_type.shape.dim
            ]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


def _fixed(shape: Sequence[int | None] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _custom_costs() -> dict[str, Any]:
    """(node_macs, node_bytes) of the project's own ops (runtime_ops), keyed "spa.ops:<op>"."""
    from spa_compiler.runtime_ops import cost_models

    return cost_models()


def custom_cost(node: onnx.NodeProto) -> Any:
    """The (node_macs, node_bytes) pair of a runtime_ops node, None for other ops."""
    if not node.domain or node.domain == "ai.onnx":
        return None
    return _custom_costs().get(f"{node.domain}:{node.op_type}")


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int | None]]) -> int | None:
    """MACs of one Conv/ConvTranspose/Gemm/MatMul node (or one of runtime_ops' structured ops),
    or None when a shape is unknown."""
    custom = custom_cost(node)
    if custom is not None:
        return custom[0](node, shapes)  # type: ignore[no-any-return]
    ins = [shapes.get(n) for n in node.input]
    out = shapes.get(node.output[0]) if node.output else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        w = ins[1] if len(ins) > 1 else None
        if not (_fixed(w) and _fixed(out)):
            return None
        return int(np.prod(out)) * int(np.prod(w[1:]))  # type: ignore[index]
    if node.op_type == "ConvTranspose":
        x, w = ins[0], ins[1] if len(ins) > 1 else None
        if not (_fixed(x) and _fixed(w)):
            return None
        return int(np.prod(x)) * int(np.prod(w[1:]))  # type: ignore[index]
    if node.op_type == "Gemm":
        a, b = ins[0], ins[1] if len(ins) > 1 else None
        if not (_fixed(a) and _fixed(b)):
            return None
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])  # type: ignore[index]
        n = b[0] if attrs.get("transB", 0) else b[1]  # type: ignore[index]
        return int(m) * int(k) * int(n)
    if node.op_type == "MatMul":
        a = ins[0]
        if not (_fixed(a) and _fixed(out)):
            return None
        k = a[-1]  # type: ignore[index]
        return int(np.prod(out)) * int(k)
    return None


def _count(
    proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int | None]]
) -> tuple[int, int, dict[str, int]]:
    macs, unknown = 0, 0
    by_op: dict[str, int] = {}
    for node in proto.graph.node:
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
        if node.op_type in COUNTED_OPS or custom_cost(node) is not None:
            m = node_macs(node, shapes)
            if m is None:
                unknown += 1
            else:
                macs += m
    return macs, unknown, by_op


def model_stats(model: ModelIR, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Params, MACs (None if any counted op has an unknown shape) and op counts of a model."""
    proto = model.to_proto(weights=False)  # shapes and counts only: no copy of the weights
    for vi in proto.graph.input:
        if input_shapes and vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    with stripped_large_tensors(proto) as small:
        try:
            inferred = onnx.shape_inference.infer_shapes(small, data_prop=True)
        except Exception:  # stats are best effort; invalid models are caught elsewhere
            inferred = small
    shapes = _shapes(inferred)
    macs, unknown, by_op = _count(inferred, shapes)
    if unknown and not model.symbolic_inputs().keys() - set(input_shapes or {}):
        # ONNX shape inference cannot follow some run-time shape chains (TorchScript attention
        # reshapes): take the shapes from one ONNX Runtime run instead, as the group analysis does
        try:
            from spa_compiler.groups.analysis import static_shapes

            ort_shapes, _, _ = static_shapes(model, input_shapes)
            merged = {**shapes, **{k: list(v) for k, v in ort_shapes.items()}}
            macs, unknown, by_op = _count(inferred, merged)
        except Exception:  # stats are best effort
            pass
    return {
        "params": model.count_params(),
        "macs": None if unknown else macs,
        "macs_unknown_nodes": unknown,
        "nodes": len(inferred.graph.node),
        "ops": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    }

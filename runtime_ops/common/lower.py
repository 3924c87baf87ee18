"""Replace spa.ops nodes by their standard-ONNX decompositions, model-wide."""

from __future__ import annotations

import onnx
from onnx import shape_inference

from ..monarch_matmul import decompose as monarch_decompose
from ..monarch_matmul import op as monarch_op
from ..nm_sparse_matmul import decompose as nm_decompose
from ..nm_sparse_matmul import op as nm_op
from .schema import DOMAIN


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    """name -> (dims, elem_type) from initializers, inputs, value_info (after inference)."""
    out: dict[str, tuple[list[int | None], int]] = {}
    for init in model.graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # best effort: initializers usually suffice
        inferred = model
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name in out or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = (dims, tt.elem_type)
    return out


def _need(shapes: dict, name: str, node: onnx.NodeProto, rank: int) -> list[int]:
    got = shapes.get(name)
    if got is None or len(got[0]) != rank or any(d is None for d in got[0]):
        raise ValueError(
            f"cannot decompose {node.op_type} node {node.name!r}: input {name!r} needs a static "
            f"rank-{rank} shape (initializer or inferred), got {None if got is None else got[0]}"
        )
    return [int(d) for d in got[0]]  # type: ignore[arg-type]


def decompose_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with MonarchMatMul / NMSparseMatMul replaced by standard ops.

    The spa.ops opset import is dropped when no spa.ops node is left; the default-domain opset is
    raised to 13 if lower (Unsqueeze/ReduceSum-style input axes). Raises ValueError when a
    weight's shape is unknown.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = _static_shapes(model)
    g = out.graph
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for i, node in enumerate(g.node):
        if node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        prefix = f"{node.name or node.op_type}_{i}"
        if node.op_type == monarch_op.OP_TYPE:
            b, br, kb = _need(shapes, node.input[1], node, 3)
            _, nq, _ = _need(shapes, node.input[2], node, 3)
            nodes, inits = monarch_decompose.decompose_node(node, b, br // b, kb, nq, prefix)
        elif node.op_type == nm_op.OP_TYPE:
            n, half = _need(shapes, node.input[1], node, 2)
            elem = shapes[node.input[1]][1]
            nodes, inits = nm_decompose.decompose_node(node, n, 2 * half, elem, prefix)
        else:
            raise ValueError(f"unknown {DOMAIN} op {node.op_type!r} (node {node.name!r})")
        new_nodes.extend(nodes)
        new_inits.extend(inits)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    if not any(n.domain == DOMAIN for n in g.node):
        keep = [o for o in out.opset_import if o.domain != DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 13:
            o.version = 13
    return out

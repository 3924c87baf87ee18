"""MonarchMatMul as standard ONNX ops (opset >= 13): the fallback for runtimes without the kernel.

    X (..., K) -Reshape-> (B, b, kb) -Transpose(1,0,2)-> (b, B, kb)
      -MatMul R^T (b, kb, b*r)-> (b, B, b*r) -Reshape-> (j=b, B, t=b, r)
      -Transpose(2,1,0,3)-> (t, B, j, r) -Reshape-> (b, B, b*r)
      -MatMul L^T (b, b*r, nq)-> (t, B, q) -Transpose(1,2,0)-> (B, q, t) -Reshape-> (..., N) (+ bias)

The factors' transposes are Transpose nodes (constant-folded by ONNX Runtime when R and L are
initializers). The leading shape of Y is X's, recovered at run time with Shape/Slice/Concat so any
batch shape works.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .op import OP_TYPE


def decompose_node(
    node: onnx.NodeProto, b: int, r: int, kb: int, nq: int, prefix: str | None = None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard nodes (and their int64 constant initializers) computing `node`'s output."""
    if node.op_type != OP_TYPE:
        raise ValueError(f"not a {OP_TYPE} node: {node.op_type}")
    p = prefix or (node.name or node.output[0]) + "/monarch"
    x, rf, lf = node.input[0], node.input[1], node.input[2]
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    y = node.output[0]
    c = {
        "s1": np.array([-1, b, kb], np.int64),
        "s2": np.array([b, -1, b, r], np.int64),
        "s3": np.array([b, -1, b * r], np.int64),
        "n": np.array([nq * b], np.int64),
        "zero": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    inits = [numpy_helper.from_array(v, f"{p}/{k}") for k, v in c.items()]
    n = helper.make_node
    nodes = [
        n("Reshape", [x, f"{p}/s1"], [f"{p}/x3"], name=f"{p}/reshape_x"),
        n("Transpose", [f"{p}/x3"], [f"{p}/xt"], perm=[1, 0, 2], name=f"{p}/transpose_x"),
        n("Transpose", [rf], [f"{p}/rt"], perm=[0, 2, 1], name=f"{p}/transpose_r"),
        n("MatMul", [f"{p}/xt", f"{p}/rt"], [f"{p}/u"], name=f"{p}/stage1"),
        n("Reshape", [f"{p}/u", f"{p}/s2"], [f"{p}/u4"], name=f"{p}/reshape_u"),
        n("Transpose", [f"{p}/u4"], [f"{p}/ut"], perm=[2, 1, 0, 3], name=f"{p}/permute"),
        n("Reshape", [f"{p}/ut", f"{p}/s3"], [f"{p}/v"], name=f"{p}/reshape_v"),
        n("Transpose", [lf], [f"{p}/lt"], perm=[0, 2, 1], name=f"{p}/transpose_l"),
        n("MatMul", [f"{p}/v", f"{p}/lt"], [f"{p}/w"], name=f"{p}/stage2"),
        n("Transpose", [f"{p}/w"], [f"{p}/wt"], perm=[1, 2, 0], name=f"{p}/transpose_y"),
        n("Shape", [x], [f"{p}/xshape"], name=f"{p}/shape_x"),
        n(
            "Slice",
            [f"{p}/xshape", f"{p}/zero", f"{p}/minus1"],
            [f"{p}/lead"],
            name=f"{p}/lead_dims",
        ),
        n("Concat", [f"{p}/lead", f"{p}/n"], [f"{p}/yshape"], axis=0, name=f"{p}/y_shape"),
    ]
    if bias:
        nodes.append(n("Reshape", [f"{p}/wt", f"{p}/yshape"], [f"{p}/y0"], name=f"{p}/reshape_y"))
        nodes.append(n("Add", [f"{p}/y0", bias], [y], name=f"{p}/bias"))
    else:
        nodes.append(n("Reshape", [f"{p}/wt", f"{p}/yshape"], [y], name=f"{p}/reshape_y"))
    return nodes, inits

"""NMSparseMatMul as standard ONNX ops (opset >= 13): the fallback for runtimes without the kernel.

The dense W is rebuilt from (values, meta) with standard ops, then one MatMul:

    meta (N, K/8) uint8 -Unsqueeze-> (N, K/8, 1) -BitShift RIGHT by [0, 2, 4, 6]-> (N, K/8, 4)
      -Mod 4-> column-in-group indices [i0(even g), i1(even g), i0(odd g), i1(odd g)]
      -Reshape-> (N, K/4, 2) -Cast int64-> ScatterElements(zeros (N, K/4, 4), idx, values (N, K/4, 2))
      -Reshape-> W (N, K) -Transpose-> (K, N);  Y = MatMul(X, W^T) (+ bias)

With values and meta as initializers ONNX Runtime folds the reconstruction into one constant, so
the run-time graph is a dense MatMul: exactly what this fallback is meant to be (no speed-up, same
numbers).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .op import OP_TYPE


def decompose_node(
    node: onnx.NodeProto, n_rows: int, k: int, elem_type: int, prefix: str | None = None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard nodes (and constant initializers) computing `node`'s output.

    Args:
        node: The NMSparseMatMul node.
        n_rows: N (rows of W).
        k: K (columns of W).
        elem_type: TensorProto element type of X / values (for the zeros W starts from).
    """
    if node.op_type != OP_TYPE:
        raise ValueError(f"not a {OP_TYPE} node: {node.op_type}")
    p = prefix or (node.name or node.output[0]) + "/nm"
    x, values, meta = node.input[0], node.input[1], node.input[2]
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    y = node.output[0]
    np_dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    inits = [
        numpy_helper.from_array(np.array([0, 2, 4, 6], np.uint8), f"{p}/shifts"),
        numpy_helper.from_array(np.array([4], np.uint8), f"{p}/four"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}/axis_last"),
        numpy_helper.from_array(np.array([n_rows, k // 4, 2], np.int64), f"{p}/pairs"),
        numpy_helper.from_array(np.array([n_rows, k], np.int64), f"{p}/dense"),
    ]
    zero = helper.make_tensor(f"{p}/zero_value", elem_type, [1], [0])
    if np_dtype == np.dtype("float16"):  # make_tensor wants raw half bits for float16
        zero = numpy_helper.from_array(np.zeros(1, np.float16), f"{p}/zero_value")
    n = helper.make_node
    nodes = [
        n("Unsqueeze", [meta, f"{p}/axis_last"], [f"{p}/m3"], name=f"{p}/unsqueeze_meta"),
        n(
            "BitShift",
            [f"{p}/m3", f"{p}/shifts"],
            [f"{p}/sh"],
            direction="RIGHT",
            name=f"{p}/shift",
        ),
        n("Mod", [f"{p}/sh", f"{p}/four"], [f"{p}/idx8"], name=f"{p}/mod4"),
        n("Reshape", [f"{p}/idx8", f"{p}/pairs"], [f"{p}/idx3"], name=f"{p}/reshape_idx"),
        n("Cast", [f"{p}/idx3"], [f"{p}/idx"], to=onnx.TensorProto.INT64, name=f"{p}/cast_idx"),
        n("Reshape", [values, f"{p}/pairs"], [f"{p}/v3"], name=f"{p}/reshape_values"),
        n(
            "ConstantOfShape",
            [f"{p}/groups_shape"],
            [f"{p}/zeros"],
            value=zero,
            name=f"{p}/zeros",
        ),
        n(
            "ScatterElements",
            [f"{p}/zeros", f"{p}/idx", f"{p}/v3"],
            [f"{p}/w3"],
            axis=2,
            name=f"{p}/scatter",
        ),
        n("Reshape", [f"{p}/w3", f"{p}/dense"], [f"{p}/w"], name=f"{p}/reshape_w"),
        n("Transpose", [f"{p}/w"], [f"{p}/wt"], perm=[1, 0], name=f"{p}/transpose_w"),
    ]
    inits.append(
        numpy_helper.from_array(np.array([n_rows, k // 4, 4], np.int64), f"{p}/groups_shape")
    )
    if bias:
        nodes.append(n("MatMul", [x, f"{p}/wt"], [f"{p}/y0"], name=f"{p}/matmul"))
        nodes.append(n("Add", [f"{p}/y0", bias], [y], name=f"{p}/bias"))
    else:
        nodes.append(n("MatMul", [x, f"{p}/wt"], [y], name=f"{p}/matmul"))
    return nodes, inits

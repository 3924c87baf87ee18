"""Small ONNX models that use one spa.ops node, and ORT session helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa_compiler import runtime_ops

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


def one_node_model(
    op_type: str,
    inputs: Sequence[tuple[str, np.ndarray | None, int, Sequence[int | str] | None]],
    y_elem: int,
    y_dims: Sequence[int | str] | None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A graph with one spa.ops node. `inputs`: (name, value or None, elem type, dims): a value
    makes an initializer, None a graph input of those dims."""
    names = [n for n, *_ in inputs]
    node = helper.make_node(op_type, names, ["Y"], domain=runtime_ops.DOMAIN, name=f"{op_type}_0")
    graph_inputs, inits = [], []
    for name, value, elem, dims in inputs:
        if value is None:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, dims))
        else:
            inits.append(numpy_helper.from_array(value, name))
    out = helper.make_tensor_value_info("Y", y_elem, y_dims)
    g = helper.make_graph([node], "g", graph_inputs, [out], initializer=inits)
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(runtime_ops.DOMAIN, 1)],
    )
    m.ir_version = 9
    return m


def session(model: onnx.ModelProto, lib: Path | None = None, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got = got.astype(np.float64)
    assert np.isfinite(got).all(), "non-finite output"
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


#: relative-error bounds: float32 accumulation over K terms; float16 rounding of inputs/outputs
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 3e-3}

"""Test helpers: small models built with onnx.helper, ORT runs, named tolerances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa_compiler.ir import ModelIR
from spa_compiler.ort import run

TOL = {"fp32": {"rtol": 1e-5, "atol": 1e-5}, "fp16": {"rtol": 1e-2, "atol": 1e-3}}


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Mapping[str, np.ndarray] = (),  # type: ignore[assignment]
    *,
    opset: int = 17,
    ir_version: int = 9,
) -> onnx.ModelProto:
    """A checked ModelProto from nodes, value infos and numpy initializers."""
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in dict(initializers).items()]
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_chain_model(rng: np.random.Generator, *, c: int = 16, residual: bool = False) -> onnx.ModelProto:
    """x(1,3,8,8) -> Conv(c) -> BN -> Relu -> Conv(c) -> Relu -> Conv(8) [+ residual Add] -> y.

    With `residual`, a second branch adds into the middle conv's output, which makes that chain
    non-simple (two readers), exercising the skip reasons.
    """
    f = np.float32
    init = {
        "w1": rng.standard_normal((c, 3, 3, 3)).astype(f),
        "b1": rng.standard_normal(c).astype(f),
        "bn_s": rng.uniform(0.5, 1.5, c).astype(f),
        "bn_b": rng.standard_normal(c).astype(f),
        "bn_m": rng.standard_normal(c).astype(f) * 0.1,
        "bn_v": rng.uniform(0.5, 1.5, c).astype(f),
        "w2": rng.standard_normal((c, c, 3, 3)).astype(f) * 0.2,
        "b2": rng.standard_normal(c).astype(f),
        "w3": rng.standard_normal((8, c, 1, 1)).astype(f) * 0.2,
        "b3": rng.standard_normal(8).astype(f),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    last = "c2"
    if residual:
        nodes.append(helper.make_node("Add", ["c2", "r1"], ["a2"], name="add"))
        last = "a2"
    nodes += [
        helper.make_node("Relu", [last], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        init,
    )


def run_ort(model: onnx.ModelProto | ModelIR, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run with ONNX Runtime on the CPU, graph optimizations off (we test our graph, not ORT's)."""
    return run(model, feeds, optimize=False)


def relative_output_error(model: onnx.ModelProto | ModelIR, dense: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    """sum ||y - y_dense||^2 / sum ||y_dense||^2 of the first output over `feeds` (ONNX Runtime)."""
    num = den = 0.0
    for f in feeds:
        (a,), (b,) = run_ort(model, f), run_ort(dense, f)
        num += float(((a - b) ** 2).sum())
        den += float((b**2).sum())
    return num / den

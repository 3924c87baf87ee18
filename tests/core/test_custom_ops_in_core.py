"""runtime_ops' structured ops are ordinary nodes to the core: the group analysis applies their
channel rules (frozen with a reason, never guessed) and MACs / bytes come from their cost models."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from spa_compiler import runtime_ops
from spa_compiler.groups.analysis import analyze
from spa_compiler.ir import ModelIR
from spa_compiler.latency.analytic import estimate_model
from spa_compiler.runtime_ops.monarch_matmul import op as mop
from spa_compiler.stats import model_stats


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    b, r, kb, nq = 4, 1, 4, 4  # K = b * kb = 16, N = nq * b = 16
    f = np.float32
    inits = {
        "w1": rng.standard_normal((16, 16)).astype(f),
        "R": rng.standard_normal((b, b * r, kb)).astype(f),
        "L": rng.standard_normal((b, nq, b * r)).astype(f),
        "w2": rng.standard_normal((16, 8)).astype(f),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu"),
        helper.make_node("MonarchMatMul", ["a1", "R", "L"], ["h2"], name="monarch", domain=runtime_ops.DOMAIN),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(runtime_ops.DOMAIN, 1)])


def test_the_analysis_applies_the_ops_rule(rng: np.random.Generator) -> None:
    runtime_ops.register_schemas()
    model = ModelIR.from_proto(_model(rng))
    an = analyze(model)
    assert not an.unknown_ops  # the op has a rule
    reasons = {g.reason for g in an.groups if g.frozen}
    assert any(r and r.startswith("monarch-block-structure") for r in reasons)
    assert not an.prunable  # mm1's outputs feed the op's frozen K axis; mm2's feed the graph output


def test_macs_and_bytes_come_from_the_cost_model(rng: np.random.Generator) -> None:
    proto = _model(rng)
    stats = model_stats(ModelIR.from_proto(proto), {})
    want = 4 * 16 * 16 + mop.macs((4, 16), (4, 4, 4), (4, 4, 4)) + 4 * 16 * 8
    assert stats["macs"] == want
    est = estimate_model(proto, "cpu-generic", input_shapes={"x": (4, 16)})
    assert est.total_ms > 0

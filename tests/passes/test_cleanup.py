"""cleanup: exact, removes Identity and dead nodes, keeps graph-output Identities."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR
from spa_compiler.passes.cleanup import CleanupPass
from spa_compiler.validation import check_model
from tests.helpers import make_model, run_ort


def test_removes_identity_and_dead_code_exactly(rng: np.random.Generator) -> None:
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Identity", ["x"], ["i1"]),
        helper.make_node("Relu", ["i1"], ["r"]),
        helper.make_node("Sigmoid", ["x"], ["dead"]),
        helper.make_node("Identity", ["r"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", TensorProto.FLOAT, [4])], [vi("y", TensorProto.FLOAT, [4])])
    model = ModelIR.from_proto(proto)
    result = CleanupPass().run(model, CompileContext())
    assert result.modified and result.stats == {"nodes_removed": 2, "identities_removed": 1}
    assert [n.op for n in model.graph.nodes] == ["Relu", "Identity"]  # output Identity kept
    check_model(model)
    x = {"x": rng.standard_normal(4).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(model, x)[0], run_ort(proto, x)[0])


def test_clean_graph_is_not_modified(rng: np.random.Generator) -> None:
    vi = helper.make_tensor_value_info
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, [4])],
                       [vi("y", TensorProto.FLOAT, [4])])
    assert not CleanupPass().run(ModelIR.from_proto(proto), CompileContext()).modified

"""Model statistics: MACs agree between exporters, also where ONNX shape inference gives up."""

from __future__ import annotations

import pytest

from spa_compiler import models_zoo
from spa_compiler.ir import ModelIR
from spa_compiler.stats import model_stats


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_bert", "tiny_gpt", "tiny_llama"])
def test_macs_known_and_equal_across_exporters(name: str) -> None:
    shapes = models_zoo.default_shapes(name)
    macs = []
    for exporter in models_zoo.EXPORTERS:
        s = model_stats(ModelIR.load(models_zoo.build(name, exporter)), shapes)
        assert s["macs_unknown_nodes"] == 0 and s["macs"] > 0
        macs.append(s["macs"])
    assert macs[0] == macs[1]


def test_macs_through_runtime_shape_arithmetic(rng) -> None:
    """A reshape target computed at run time (as TorchScript writes attention) that ONNX shape
    inference cannot follow: the MACs come from one ONNX Runtime run instead."""
    import numpy as np
    from onnx import TensorProto, helper

    from tests.helpers import make_model

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["sf"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["sq"]),
        helper.make_node("Round", ["sq"], ["rr"]),
        helper.make_node("Cast", ["rr"], ["si"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "si"], ["y"]),
        helper.make_node("MatMul", ["y", "w"], ["z"]),
    ]
    vi = helper.make_tensor_value_info
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, [4, 8])], [vi("z", TensorProto.FLOAT, ["a", "b"])],
                   {"w": rng.standard_normal((8, 16)).astype(np.float32)})
    s = model_stats(ModelIR.from_proto(m))
    assert s["macs_unknown_nodes"] == 0
    assert s["macs"] == 4 * 8 * 16

"""prune-magnitude: structure, validity, the masked-dense oracle, and skip reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.pass_manager import PassManager
from spa_compiler.passes.prune_magnitude import PruneMagnitudePass, channel_scores, kept_count
from spa_compiler.validation import check_model
from tests.helpers import TOL, conv_chain_model, make_model, run_ort


def _masked_reference(proto: onnx.ModelProto, removed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The dense model with the consumer-side input channels of `removed` zeroed (ALGORITHMS §1)."""
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    for init in ref.graph.initializer:
        if init.name in removed:
            w = onnx.numpy_helper.to_array(init).copy()
            w[:, removed[init.name]] = 0
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    return ref


def test_prunes_conv_chains_matching_masked_dense(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng, c=16)
    model = ModelIR.from_proto(proto)
    w1 = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    w2 = onnx.numpy_helper.to_array([t for t in proto.graph.initializer if t.name == "w2"][0])
    result = PassManager([PruneMagnitudePass(ratio=0.25)]).run(model, CompileContext())
    assert result.modified
    t = model.tensors()
    assert t["w1"].values.shape == (12, 3, 3, 3) and t["bn_s"].values.shape == (12,)
    assert t["w2"].values.shape == (12, 12, 3, 3) and t["w3"].values.shape == (8, 12, 1, 1)
    check_model(model)
    # the removed channels are the smallest-L2 filters of each producer
    gone1 = np.setdiff1d(np.arange(16), np.argsort(-channel_scores(w1, "l2"))[:12])
    gone2 = np.setdiff1d(np.arange(16), np.argsort(-channel_scores(w2, "l2"))[:12])
    ref = _masked_reference(proto, {"w2": gone1, "w3": gone2})
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(model, x)[0], run_ort(ref, x)[0], **TOL["fp32"])


def test_ratio_zero_is_identity(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    model = ModelIR.from_proto(proto)
    result = PruneMagnitudePass(ratio=0.0).run(model, CompileContext())
    assert not result.modified and result.skipped["nothing-to-remove"] == 2
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(model, x)[0], run_ort(proto, x)[0])


def test_residual_and_output_chains_are_skipped_with_reasons(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng, residual=True))
    result = PruneMagnitudePass(ratio=0.5).run(model, CompileContext())
    assert not result.modified
    assert result.skipped == {"multiple-consumers": 1, "consumer-op:Add": 1, "feeds-graph-output": 1}


def test_shared_initializer_is_copied_not_corrupted(rng: np.random.Generator) -> None:
    """Two chains read the same producer weight: each gets its own slice; outputs stay right."""
    f = np.float32
    init = {
        "w": rng.standard_normal((8, 3, 1, 1)).astype(f),
        "v1": rng.standard_normal((4, 8, 1, 1)).astype(f),
        "v2": rng.standard_normal((4, 8, 1, 1)).astype(f),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="p1"),
        helper.make_node("Relu", ["a"], ["ra"], name="r1"),
        helper.make_node("Conv", ["ra", "v1"], ["y1"], name="c1"),
        helper.make_node("Conv", ["x", "w"], ["b"], name="p2"),
        helper.make_node("Conv", ["b", "v2"], ["y2"], name="c2"),
    ]
    vi = helper.make_tensor_value_info
    proto = make_model(
        nodes,
        [vi("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [vi("y1", TensorProto.FLOAT, [1, 4, 4, 4]), vi("y2", TensorProto.FLOAT, [1, 4, 4, 4])],
        init,
    )
    model = ModelIR.from_proto(proto)
    result = PassManager([PruneMagnitudePass(ratio=0.5)]).run(model, CompileContext())
    assert result.stats["prune-magnitude.chains_pruned"] == 2
    check_model(model)
    x = {"x": rng.standard_normal((1, 3, 4, 4)).astype(f)}
    gone = np.setdiff1d(np.arange(8), np.argsort(-channel_scores(init["w"], "l2"))[:4])
    ref = _masked_reference(proto, {"v1": gone, "v2": gone})
    for got, want in zip(run_ort(model, x), run_ort(ref, x)):
        np.testing.assert_allclose(got, want, **TOL["fp32"])


@pytest.mark.parametrize(("c", "ratio", "round_to", "kept"), [(16, 0.25, 1, 12), (16, 0.3, 8, 16),
                                                              (64, 0.5, 8, 32), (10, 0.95, 1, 1)])
def test_kept_count(c: int, ratio: float, round_to: int, kept: int) -> None:
    assert kept_count(c, ratio, round_to) == kept


@pytest.mark.parametrize("opts", [{"ratio": 1.0}, {"ratio": -0.1}, {"norm": "l3"}, {"round_to": 0}])
def test_option_validation(opts: dict, rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    with pytest.raises(PreconditionError):
        PruneMagnitudePass(**opts).check_preconditions(model, CompileContext())

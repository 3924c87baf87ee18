"""Closed-form consumer-input Hessians from BatchNorm (+ activation) chains (moment_sources).

The oracle is Monte Carlo through ONNX Runtime: the graph BN -> activation -> consumer is run on
pre-BN inputs drawn from the BN's running statistics, i.i.d. over samples, channels and positions,
so the BN output is exactly N(beta, gamma^2 var / (var + eps)) per channel and the model's
independence assumptions hold. The Conv consumer uses stride = kernel (non-overlapping patches),
so the im2col rows are independent and every entry's sample mean has the CLT standard error
SE = sqrt((E[x_i^2 x_j^2] - E[x_i x_j]^2) / n). We accept |closed form - MC| <= 6 SE + 1e-6: a
correct formula fails an entry with probability ~2e-9 (and the seed is fixed); a wrong one (a
sigma for a variance, a dropped mean, the wrong Clip bounds or LeakyRelu slope) is off by many SE.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from spa_compiler.criteria.hessian import HessianAccumulator, im2col
from spa_compiler.criteria.moment_sources import BATCHNORM, CALIBRATION, RESPONSE, batchnorm_moments
from spa_compiler.criteria.obs import prepare_hessian
from spa_compiler.criteria.paths import group_paths
from spa_compiler.errors import UsageError
from spa_compiler.groups.analysis import analyze
from spa_compiler.ir import ModelIR
from tests.helpers import make_model, run_ort

C = 4
GAMMA = np.array([1.5, -0.7, 0.8, 2.0], dtype=np.float32)  # one negative scale
BETA = np.array([0.2, -0.5, 1.0, 2.5], dtype=np.float32)
MEAN = np.array([3.0, -1.0, 0.0, 0.5], dtype=np.float32)
VAR = np.array([4.0, 0.5, 1.0, 3e-5], dtype=np.float32)  # the last comparable to eps
EPS = 1e-5

#: name -> (nodes from "n" (BN output) to "a" (consumer input), extra initializers, opset)
ACTIVATIONS: dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray], int]] = {
    "none": ([], {}, 17),
    "relu": ([helper.make_node("Relu", ["n"], ["a"], name="act")], {}, 17),
    "relu6": ([helper.make_node("Clip", ["n", "lo", "hi"], ["a"], name="act")],
              {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}, 17),
    "clip": ([helper.make_node("Clip", ["n", "lo", "hi"], ["a"], name="act")],
             {"lo": np.array(-1.0, np.float32), "hi": np.array(1.5, np.float32)}, 17),
    "clip_min_only": ([helper.make_node("Clip", ["n", "lo"], ["a"], name="act")],
                      {"lo": np.array(0.5, np.float32)}, 17),
    "leaky_relu": ([helper.make_node("LeakyRelu", ["n"], ["a"], name="act", alpha=0.2)], {}, 17),
    "sigmoid": ([helper.make_node("Sigmoid", ["n"], ["a"], name="act")], {}, 17),
    "tanh": ([helper.make_node("Tanh", ["n"], ["a"], name="act")], {}, 17),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["n"], ["a"], name="act", alpha=0.3, beta=0.4)], {}, 17),
    "hardswish": ([helper.make_node("HardSwish", ["n"], ["a"], name="act")], {}, 17),
    "silu": ([helper.make_node("Sigmoid", ["n"], ["s"], name="sig"),
              helper.make_node("Mul", ["s", "n"], ["a"], name="act")], {}, 17),
    "gelu": ([helper.make_node("Gelu", ["n"], ["a"], name="act")], {}, 20),
    "gelu_tanh": ([helper.make_node("Gelu", ["n"], ["a"], name="act", approximate="tanh")], {}, 20),
}


def _bn_model(act: str, *, conv: bool, n: int, hw: int = 30, training_mode: bool = False) -> onnx.ModelProto:
    """x -> BatchNormalization -> activation -> a -> (Conv 3x3 stride 3 | Gemm) -> y; outputs a, y."""
    nodes, extra, opset = ACTIVATIONS[act]
    nodes = list(nodes) if nodes else [helper.make_node("Identity", ["n"], ["a"], name="act")]
    if act == "none":  # BN feeds the consumer directly
        nodes = []
    a = "a" if act != "none" else "n"
    init = {"g": GAMMA, "b": BETA, "m": MEAN, "v": VAR, **extra}
    attrs = {"training_mode": 1} if training_mode else {}
    bn_out = ["n", "running_mean", "running_var"] if training_mode else ["n"]
    bn = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], bn_out, name="bn", epsilon=EPS, **attrs)
    vi = helper.make_tensor_value_info
    if conv:
        init["w"] = np.ones((2, C, 3, 3), np.float32)
        consumer = helper.make_node("Conv", [a, "w"], ["y"], name="consumer", strides=[3, 3])
        x_shape, y_shape, a_shape = [n, C, hw, hw], [n, 2, hw // 3, hw // 3], [n, C, hw, hw]
    else:
        init["w"] = np.ones((2, C), np.float32)
        consumer = helper.make_node("Gemm", [a, "w"], ["y"], name="consumer", transB=1)
        x_shape, y_shape, a_shape = [n, C], [n, 2], [n, C]
    outputs = [vi(a, TensorProto.FLOAT, a_shape), vi("y", TensorProto.FLOAT, y_shape)]
    return make_model([bn, *nodes, consumer], [vi("x", TensorProto.FLOAT, x_shape)], outputs, init, opset=opset)


def _pre_bn(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Pre-BN inputs following the running statistics, i.i.d. everywhere."""
    bshape = (1, C) + (1,) * (len(shape) - 2)
    return (MEAN.reshape(bshape) + np.sqrt(VAR).reshape(bshape) * rng.standard_normal(shape)).astype(np.float32)


def _consumer_input(model: ModelIR, name: str = "consumer") -> gs.Tensor:
    return next(n for n in model.graph.nodes if n.name == name).inputs[0]


def _assert_hessian_matches_mc(h: np.ndarray, feats: np.ndarray, what: str) -> None:
    f = feats.astype(np.float64)
    n = f.shape[0]
    e2 = f.T @ f / n
    e4 = (f * f).T @ (f * f) / n
    se = np.sqrt(np.clip(e4 - e2 * e2, 0.0, None) / n)
    diff = np.abs(0.5 * h - e2)
    bad = diff > 6.0 * se + 1e-6
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} entries off; worst "
        f"{float((diff / (se + 1e-12)).max()):.1f} SE at {np.unravel_index(int(np.argmax(diff - 6 * se)), diff.shape)}"
    )


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_conv_im2col_hessian_matches_monte_carlo(act: str) -> None:
    """BN -> act -> 3x3 Conv: closed-form H over (channel, kernel position) columns vs samples."""
    n = 600  # 600 images x 100 patches = 60k independent im2col rows
    proto = _bn_model(act, conv=True, n=n)
    model = ModelIR.from_proto(proto)
    sm, why = batchnorm_moments(_consumer_input(model), C * 9, conv=True)
    assert sm is not None, why
    assert sm.source == BATCHNORM and sm.nodes[0] == "bn"
    h = sm.hessian(C * 9, damp=0.0)
    assert h.shape == (C * 9, C * 9)
    a, _ = run_ort(proto, {"x": _pre_bn(np.random.default_rng(11), (n, C, 30, 30))})
    feats = im2col(a, (3, 3), strides=(3, 3))
    _assert_hessian_matches_mc(h, feats, act)
    # and through the repository's own accumulator (the object criteria uses for the response)
    acc = HessianAccumulator(C * 9)
    acc.add_batch(feats)
    assert np.max(np.abs(acc.hessian(damp=0.0) - h)) < 0.05 * max(1.0, float(np.max(np.abs(h))))


@pytest.mark.parametrize("act", ["relu", "silu", "clip"])
def test_gemm_hessian_matches_monte_carlo(act: str) -> None:
    n = 200_000
    proto = _bn_model(act, conv=False, n=n)
    model = ModelIR.from_proto(proto)
    sm, why = batchnorm_moments(_consumer_input(model), C, conv=False)
    assert sm is not None, why
    a, _ = run_ort(proto, {"x": _pre_bn(np.random.default_rng(12), (n, C))})
    _assert_hessian_matches_mc(sm.hessian(C, damp=0.0), a, act)


def test_training_mode_batchnorm_normalizes_by_the_batch() -> None:
    """training_mode=1: the batch's own statistics, so the output std is |gamma| exactly."""
    n = 200_000
    proto = _bn_model("relu", conv=False, n=n, training_mode=True)
    sm, why = batchnorm_moments(_consumer_input(ModelIR.from_proto(proto)), C, conv=False)
    assert sm is not None, why
    x = np.random.default_rng(13).normal(5.0, 3.0, (n, C)).astype(np.float32)  # not the running stats
    a, _ = run_ort(proto, {"x": x})
    _assert_hessian_matches_mc(sm.hessian(C, damp=0.0), a, "training-mode relu")


def test_the_mc_check_can_fail() -> None:
    """The same check rejects plausible mistakes: sigma as a variance, the mean dropped."""
    n = 200_000
    proto = _bn_model("relu", conv=False, n=n)
    sm, _ = batchnorm_moments(_consumer_input(ModelIR.from_proto(proto)), C, conv=False)
    assert sm is not None
    a, _ = run_ort(proto, {"x": _pre_bn(np.random.default_rng(12), (n, C))})
    from spa_compiler.criteria.moments import activation_moments, batchnorm_gaussian

    mu, sigma = batchnorm_gaussian(GAMMA, BETA, MEAN, VAR, eps=EPS)
    for wrong in (activation_moments(mu, sigma**2, "relu"), activation_moments(0 * mu, sigma, "relu")):
        with pytest.raises(AssertionError, match="entries off"):
            _assert_hessian_matches_mc(2.0 * wrong.second_moment_matrix(), a, "wrong")


# ------------------------------------------------------------------------------ declining


def _chain(nodes: list[onnx.NodeProto], init: dict[str, np.ndarray], x_shape: list[int], consumer_in: str,
           *, inputs: tuple[str, ...] = ("x",)) -> ModelIR:
    vi = helper.make_tensor_value_info
    init = {"g": GAMMA, "b": BETA, "m": MEAN, "v": VAR, "w": np.ones((2, C, 3, 3), np.float32), **init}
    cons = helper.make_node("Conv", [consumer_in, "w"], ["y"], name="consumer", pads=[1, 1, 1, 1])
    ins = [vi(name, TensorProto.FLOAT, x_shape if name == "x" else [C]) for name in inputs]
    proto = make_model([*nodes, cons], ins, [vi("y", TensorProto.FLOAT, [x_shape[0], 2, *x_shape[2:]])], init)
    return ModelIR.from_proto(proto)


def test_declines_what_it_cannot_model() -> None:
    bn = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], name="bn")
    cases = {
        "activation:MaxPool": _chain(
            [bn, helper.make_node("MaxPool", ["n"], ["p"], kernel_shape=[1, 1])], {}, [1, C, 6, 6], "p"),
        "no-batchnorm": _chain([helper.make_node("Relu", ["x"], ["p"])], {}, [1, C, 6, 6], "p"),
        "no-producer": _chain([], {}, [1, C, 6, 6], "x"),
        "batchnorm-params-not-constant": _chain(
            [helper.make_node("BatchNormalization", ["x", "gs", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["p"])], {}, [1, C, 6, 6], "p", inputs=("x", "gs")),
        "clip-bounds-not-constant": _chain(
            [bn, helper.make_node("Clip", ["n", "lo"], ["p"])], {}, [1, C, 6, 6], "p", inputs=("x", "lo")),
        "mul-not-silu": _chain(
            [bn, helper.make_node("Mul", ["n", "n"], ["p"])], {}, [1, C, 6, 6], "p"),
    }
    for reason, model in cases.items():
        sm, why = batchnorm_moments(_consumer_input(model), C * 9, conv=True)
        assert sm is None and why == reason, (reason, why)


def test_matmul_reads_bn_channels_only_at_rank_2() -> None:
    """BN normalizes axis 1; MatMul contracts the last axis: the same axis only for rank-2 inputs."""
    vi = helper.make_tensor_value_info
    init = {"g": GAMMA, "b": BETA, "m": MEAN, "v": VAR, "w": np.ones((C, 2), np.float32)}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["a"]),
             helper.make_node("MatMul", ["a", "w"], ["y"], name="consumer")]
    for x_shape, expect in (([8, C], None), ([8, C, C], "batchnorm-axis-not-columns")):
        y_shape = [*x_shape[:-1], 2]
        model = ModelIR.from_proto(make_model(
            nodes, [vi("x", TensorProto.FLOAT, x_shape)], [vi("y", TensorProto.FLOAT, y_shape)], init))
        model.infer_shapes()
        sm, why = batchnorm_moments(_consumer_input(model), C, conv=False)
        assert why == expect and (sm is None) == (expect is not None)
    sm, why = batchnorm_moments(_consumer_input(model), C + 1, conv=False)
    assert sm is None


# --------------------------------------------------------------------------- in the criterion


def _conv_bn_relu_conv(rng: np.random.Generator) -> onnx.ModelProto:
    f = np.float32
    c = 8
    init = {
        "w1": rng.standard_normal((c, 3, 3, 3)).astype(f) * 0.3,
        "g": rng.uniform(0.5, 1.5, c).astype(f), "b": rng.normal(0.0, 0.5, c).astype(f),
        "m": rng.normal(0.0, 0.1, c).astype(f), "v": rng.uniform(0.5, 1.5, c).astype(f),
        "w2": rng.standard_normal((4, c, 3, 3)).astype(f) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    vi = helper.make_tensor_value_info
    return make_model(nodes, [vi("x", TensorProto.FLOAT, [2, 3, 8, 8])], [vi("y", TensorProto.FLOAT, [2, 4, 8, 8])],
                      init)


def test_group_paths_use_and_name_the_moment_source(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_conv_bn_relu_conv(rng))
    (group,) = analyze(model).prunable
    feeds = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    bn_path = group_paths(model, [group], "obspa", synthetic_feeds=None)[group.id]  # needs no feeds
    assert bn_path.view_moments == [BATCHNORM] and bn_path.moments == "batchnorm"
    sm, _ = batchnorm_moments(_consumer_input(model, "conv2"), 8 * 9, conv=True)
    assert sm is not None
    np.testing.assert_allclose(bn_path.hessians[0], prepare_hessian(sm.hessian(72, damp=0.01)))
    resp = group_paths(model, [group], "obspa", synthetic_feeds=feeds, closed_form=False)[group.id]
    assert resp.moments == RESPONSE == "random-input response"
    assert not np.allclose(resp.hessians[0], bn_path.hessians[0])
    calib = group_paths(model, [group], "obs", calibration=feeds)[group.id]
    assert calib.moments == CALIBRATION
    assert group_paths(model, [group], "magnitude")[group.id].moments is None


def test_obspa_without_feeds_needs_a_batchnorm_everywhere(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(_conv_bn_relu_conv(rng))
    (group,) = analyze(model).prunable
    with pytest.raises(UsageError, match="without a BatchNorm"):
        group_paths(model, [group], "obspa", synthetic_feeds=None, closed_form=False)


def test_bn_variance_near_eps_shrinks_sigma() -> None:
    """sigma = |gamma| sqrt(var / (var + eps)): the last channel (var 3e-5, eps 1e-5) is shrunk."""
    proto = _bn_model("none", conv=False, n=4)
    sm, _ = batchnorm_moments(_consumer_input(ModelIR.from_proto(proto)), C, conv=False)
    assert sm is not None
    np.testing.assert_allclose(sm.moments.var[3], GAMMA[3] ** 2 * VAR[3] / (VAR[3] + EPS), rtol=1e-5)
    assert math.isclose(sm.moments.mean[0], BETA[0], rel_tol=1e-6)

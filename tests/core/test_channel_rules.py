"""One test per propagation rule (channel_rules.RULES), on small hand-written graphs.

Positive cases run the exact oracle (masked-dense reference vs physically pruned model, ONNX
Runtime, graph optimizations off) for every prunable group alone and for all of them at once;
negative cases check that the group is frozen and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_compiler.groups import rules as channel_rules
from spa_compiler.groups.analysis import ALL_UNITS, GroupAnalysis, analyze, random_plan
from spa_compiler.groups.oracle import oracle_check
from spa_compiler.ir import ModelIR
from tests.helpers import conv_chain_model, make_model

F = np.float32
FLOAT = TensorProto.FLOAT


def vi(name: str, shape: Sequence[int | str], dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def node(
    op: str, ins: Sequence[str], outs: Sequence[str], name: str = "", **attrs: object
) -> onnx.NodeProto:
    return helper.make_node(op, list(ins), list(outs), name=name or outs[0], **attrs)


def w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(F)


def i64(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def oracle_all(
    proto: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    min_prunable: int = 1,
    include_hidden: bool = False,
) -> GroupAnalysis:
    """Oracle for each prunable group alone, then for all at once; returns the analysis."""
    model = ModelIR.from_proto(proto)
    an = analyze(model, units=ALL_UNITS, include_hidden=include_hidden)
    assert len(an.prunable) >= min_prunable, [(g.id, g.reason) for g in an.groups]
    for g in an.prunable:
        plan = random_plan(an, rng, share=0.4, groups=[g])
        res = oracle_check(model, plan, feeds, include_hidden=include_hidden)
        assert res.max_abs <= 1e-5 * max(1.0, res.max_abs / max(res.max_rel, 1e-30)), (
            g.id,
            res.max_abs,
        )
        assert res.params_after < res.params_before
    plan = random_plan(an, rng, share=0.3)
    res = oracle_check(model, plan, feeds, include_hidden=include_hidden)
    assert res.max_rel <= 1e-5, res.max_abs
    return an


def by_producer(an: GroupAnalysis, node_name: str) -> list:
    return [
        g for g in an.groups if any(m.node == node_name and m.role == "weight" for m in g.producers)
    ]


# ---------------------------------------------------------------------- conv family
def test_conv_bn_relu_chain(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 8, 8)).astype(F)}, rng, min_prunable=2)
    (g,) = by_producer(an, "conv1")
    assert g.unit == "channel" and g.n_units == 16 and not g.frozen
    assert {m.role for m in g.producers} == {"weight", "bias", "param"}
    assert [m.node for m in g.consumers] == ["conv2"]
    assert g.consumers[0].axis == 1 and g.consumers[0].tensor == "w2"
    (out,) = by_producer(an, "conv3")
    assert out.frozen and out.reason == "graph-output"
    (inp,) = [g for g in an.groups if g.consumers and g.consumers[0].node == "conv1"]
    assert inp.frozen and inp.reason == "graph-input"


def test_residual_add_merges_groups(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng, residual=True)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 8, 8)).astype(F)}, rng)
    (g,) = by_producer(an, "conv1")
    assert by_producer(an, "conv2") == [g]  # conv2's output is added to r1: one group
    assert sorted(m.node for m in g.consumers) == ["conv2", "conv3"]


def _dw_model(rng: np.random.Generator, group: int, c: int = 8, mult: int = 1) -> onnx.ModelProto:
    init = {
        "w1": w(rng, c, 3, 1, 1),
        "b1": w(rng, c),
        "wd": w(rng, c * mult, c // group, 3, 3),
        "bd": w(rng, c * mult),
        "w3": w(rng, 4, c * mult, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "wd", "bd"], ["c2"], group=group, pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "w3"], ["y"]),
    ]
    return make_model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 4, 6, 6])], init)


def test_depthwise_conv_ties_input_and_output_channels(rng: np.random.Generator) -> None:
    an = oracle_all(
        _dw_model(rng, group=8), {"x": rng.standard_normal((1, 3, 6, 6)).astype(F)}, rng
    )
    (g,) = by_producer(an, "c1")
    assert {m.node for m in g.producers} >= {"c1", "c2"}  # the depthwise conv rides along
    assert [m.node for m in g.consumers] == ["y"]


def test_depthwise_with_multiplier(rng: np.random.Generator) -> None:
    an = oracle_all(
        _dw_model(rng, group=8, mult=2), {"x": rng.standard_normal((1, 3, 6, 6)).astype(F)}, rng
    )
    kinds = sorted(g.n_units for g in an.prunable)
    assert kinds == [2, 8]  # the 8 groups (input channels) and the 2 outputs per group


def test_grouped_conv(rng: np.random.Generator) -> None:
    an = oracle_all(
        _dw_model(rng, group=2), {"x": rng.standard_normal((1, 3, 6, 6)).astype(F)}, rng
    )
    sizes = sorted(g.n_units for g in an.prunable)
    # input channels = (2 groups x 4): the 4 per-group inputs are contracted by the grouped conv;
    # its outputs = (2 groups x 4); the 2 groups themselves are one more prunable unit kind
    assert 2 in sizes and 4 in sizes


def test_conv_transpose(rng: np.random.Generator) -> None:
    init = {
        "w1": w(rng, 6, 3, 3, 3),
        "wt": w(rng, 6, 5, 2, 2),
        "bt": w(rng, 5),
        "w3": w(rng, 2, 5, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("ConvTranspose", ["r1", "wt", "bt"], ["t"], strides=[2, 2]),
        node("Relu", ["t"], ["r2"]),
        node("Conv", ["r2", "w3"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 8, 8])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng, min_prunable=2)
    (g,) = by_producer(an, "c1")
    assert g.consumers[0].node == "t" and g.consumers[0].axis == 0


# ---------------------------------------------------------------------- linear layers
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_chain(rng: np.random.Generator, trans_b: int) -> None:
    w1 = w(rng, 16, 8) if trans_b else w(rng, 8, 16)
    init = {"w1": w1, "b1": w(rng, 16), "w2": w(rng, 4, 16) if trans_b else w(rng, 16, 4)}
    nodes = [
        node("Gemm", ["x", "w1", "b1"], ["h"], transB=trans_b),
        node("Tanh", ["h"], ["a"]),
        node("Gemm", ["a", "w2"], ["y"], transB=trans_b),
    ]
    proto = make_model(nodes, [vi("x", [3, 8])], [vi("y", [3, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((3, 8)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.unit == "neuron" and g.consumers[0].axis == (1 if trans_b else 0)


def test_matmul_weight_on_either_side(rng: np.random.Generator) -> None:
    # y = W2 @ relu(W1 @ x): weights on the left (x: (K, N) columns are samples)
    init = {"w1": w(rng, 12, 6), "w2": w(rng, 5, 12)}
    nodes = [
        node("MatMul", ["w1", "x"], ["h"]),
        node("Relu", ["h"], ["a"]),
        node("MatMul", ["w2", "a"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [6, 4])], [vi("y", [5, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((6, 4)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.producers[0].axis == 0 and g.consumers[0].axis == 1 and g.consumers[0].tensor == "w2"


def test_batched_matmul_with_per_batch_weights(rng: np.random.Generator) -> None:
    # (B, H, S, K) @ (H, K, N): per-head weights, H joined as a batch axis
    init = {"w1": w(rng, 3, 8, 10), "w2": w(rng, 3, 10, 4)}
    nodes = [
        node("MatMul", ["x", "w1"], ["h"]),
        node("Relu", ["h"], ["a"]),
        node("MatMul", ["a", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [2, 3, 5, 8])], [vi("y", [2, 3, 5, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((2, 3, 5, 8)).astype(F)}, rng)
    assert any(g.n_units == 10 for g in an.prunable)


def test_einsum(rng: np.random.Generator) -> None:
    init = {"w1": w(rng, 8, 12), "w2": w(rng, 12, 3)}
    nodes = [
        node("Einsum", ["x", "w1"], ["h"], equation="bk,kn->bn"),
        node("Relu", ["h"], ["a"]),
        node("Einsum", ["a", "w2"], ["y"], equation="bn,nm->bm"),
    ]
    proto = make_model(nodes, [vi("x", [4, 8])], [vi("y", [4, 3])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((4, 8)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.n_units == 12


# ---------------------------------------------------------------------- normalization
def _ln_model(rng: np.random.Generator, *, decomposed: bool) -> onnx.ModelProto:
    h = 16
    init = {
        "w1": w(rng, 8, h),
        "g": (1 + w(rng, h)).astype(F),
        "beta": w(rng, h),
        "w2": w(rng, h, 32),
        "w3": w(rng, 32, h),
        "two": np.asarray(2.0, F),
        "eps": np.asarray(1e-5, F),
    }
    if decomposed:  # RMSNorm as exporters write it
        norm = [
            node("Pow", ["e", "two"], ["p"]),
            node("ReduceMean", ["p"], ["ms"], axes=[-1], keepdims=1),
            node("Add", ["ms", "eps"], ["mse"]),
            node("Sqrt", ["mse"], ["rms"]),
            node("Div", ["e", "rms"], ["nx"]),
            node("Mul", ["nx", "g"], ["n"]),
        ]
    else:
        norm = [node("LayerNormalization", ["e", "g", "beta"], ["n"], axis=-1)]
    nodes = [
        node("MatMul", ["x", "w1"], ["e"]),
        *norm,
        node("MatMul", ["n", "w2"], ["u"]),
        node("Relu", ["u"], ["a"]),
        node("MatMul", ["a", "w3"], ["d"]),
        node("Add", ["e", "d"], ["r"]),
        node("MatMul", ["r", "w4"], ["y"]),
    ]
    init["w4"] = w(rng, h, 3)
    return make_model(nodes, [vi("x", [2, 5, 8])], [vi("y", [2, 5, 3])], init)


@pytest.mark.parametrize("decomposed", [False, True])
def test_layernorm_and_rmsnorm_freeze_hidden(rng: np.random.Generator, decomposed: bool) -> None:
    proto = _ln_model(rng, decomposed=decomposed)
    an = oracle_all(proto, {"x": rng.standard_normal((2, 5, 8)).astype(F)}, rng)
    (hidden,) = [g for g in an.groups if g.unit == "hidden"]
    assert hidden.frozen and "hidden width" in str(hidden.reason)
    (ffn,) = an.prunable
    assert ffn.unit == "neuron" and ffn.n_units == 32


@pytest.mark.parametrize("decomposed", [False, True])
def test_hidden_width_prunable_when_asked(rng: np.random.Generator, decomposed: bool) -> None:
    model = ModelIR.from_proto(_ln_model(rng, decomposed=decomposed))
    an = analyze(model, include_hidden=True)
    (hidden,) = [x for x in an.groups if x.unit == "hidden"]
    assert not hidden.frozen
    res = oracle_check(
        model,
        {hidden.id: [0, 3]},
        {"x": rng.standard_normal((2, 5, 8)).astype(F)},
        include_hidden=True,
    )
    assert res.params_after < res.params_before  # approximate: no exactness claimed


def test_instance_and_group_norm(rng: np.random.Generator) -> None:
    init = {
        "w1": w(rng, 8, 3, 1, 1),
        "s": (1 + w(rng, 8)).astype(F),
        "b": w(rng, 8),
        "gs": (1 + w(rng, 8)).astype(F),
        "gb": w(rng, 8),
        "w2": w(rng, 2, 8, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c"]),
        node("InstanceNormalization", ["c", "s", "b"], ["n"]),
        node("GroupNormalization", ["n", "gs", "gb"], ["gn"], num_groups=4),
        node("Conv", ["gn", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], init, opset=21)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.n_units == 4  # whole GroupNorm groups; inside a group channels are mixed
    frozen = [x for x in an.groups if x.frozen and "groupnorm" in str(x.reason)]
    assert frozen


# ---------------------------------------------------------------------- index maps
def test_concat_offsets(rng: np.random.Generator) -> None:
    init = {"wa": w(rng, 4, 3, 1, 1), "wb": w(rng, 6, 3, 1, 1), "w2": w(rng, 2, 10, 1, 1)}
    nodes = [
        node("Conv", ["x", "wa"], ["a"]),
        node("Conv", ["x", "wb"], ["b"]),
        node("Concat", ["a", "b"], ["c"], axis=1),
        node("Relu", ["c"], ["r"]),
        node("Conv", ["r", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng, min_prunable=2)
    (gb,) = by_producer(an, "b")
    (cons,) = gb.consumers
    assert cons.unit_indices(0).tolist() == [4] and cons.unit_indices(5).tolist() == [9]


@pytest.mark.parametrize("mode", ["input", "equal", "attribute"])
def test_split(rng: np.random.Generator, mode: str) -> None:
    init = {"w1": w(rng, 8, 3, 1, 1), "wa": w(rng, 2, 4, 1, 1), "wb": w(rng, 2, 4, 1, 1)}
    opset = 18 if mode == "equal" else (11 if mode == "attribute" else 17)
    if mode == "input":
        init["sizes"] = i64(4, 4)
        split = node("Split", ["c", "sizes"], ["s0", "s1"], axis=1)
    elif mode == "equal":
        split = node("Split", ["c"], ["s0", "s1"], axis=1, num_outputs=2)
    else:
        split = node("Split", ["c"], ["s0", "s1"], axis=1, split=[4, 4])
    nodes = [
        node("Conv", ["x", "w1"], ["c"]),
        split,
        node("Conv", ["s0", "wa"], ["ya"]),
        node("Conv", ["s1", "wb"], ["yb"]),
        node("Add", ["ya", "yb"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], init, opset=opset)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng, min_prunable=2)
    assert sorted(g.n_units for g in by_producer(an, "c")) == [4, 4]


def test_slice_on_channels(rng: np.random.Generator) -> None:
    init = {
        "w1": w(rng, 12, 3, 1, 1),
        "w2": w(rng, 2, 6, 1, 1),
        "st": i64(2),
        "en": i64(8),
        "ax": i64(1),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c"]),
        node("Slice", ["c", "st", "en", "ax"], ["s"]),
        node("Conv", ["s", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    # channels 0-1 and 8-11 are read by nobody: frozen "no consumer"; 2-7 prunable
    (g,) = an.prunable
    assert g.n_units == 6


def test_gather_scalar_on_channels_and_runtime_gather_frozen(rng: np.random.Generator) -> None:
    # interleaved fused gate/up: (B, 2I) -> (B, I, 2) -> gate = [..., 0], up = [..., 1]
    init = {
        "wgu": w(rng, 8, 24),
        "shape": i64(0, 12, 2),
        "i0": np.asarray(0, np.int64),
        "i1": np.asarray(1, np.int64),
        "wd": w(rng, 12, 8),
    }
    nodes = [
        node("MatMul", ["x", "wgu"], ["gu"]),
        node("Reshape", ["gu", "shape"], ["gu3"]),
        node("Gather", ["gu3", "i0"], ["gate"], axis=2),
        node("Gather", ["gu3", "i1"], ["up"], axis=2),
        node("Sigmoid", ["gate"], ["sg"]),
        node("Mul", ["gate", "sg"], ["silu"]),
        node("Mul", ["silu", "up"], ["h"]),
        node("MatMul", ["h", "wd"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [3, 8])], [vi("y", [3, 8])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((3, 8)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.unit == "neuron" and g.n_units == 12
    (prod,) = [m for m in g.producers if m.tensor == "wgu"]
    assert prod.unit_indices(3).tolist() == [6, 7]  # gate and up column of neuron 3, interleaved


def test_embedding_gather_runtime_indices(rng: np.random.Generator) -> None:
    init = {"emb": w(rng, 20, 8), "w1": w(rng, 8, 6), "w2": w(rng, 6, 3)}
    nodes = [
        node("Gather", ["emb", "ids"], ["e"]),
        node("MatMul", ["e", "w1"], ["h"]),
        node("Relu", ["h"], ["a"]),
        node("MatMul", ["a", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("ids", [2, 5], TensorProto.INT64)], [vi("y", [2, 5, 3])], init)
    an = oracle_all(
        proto, {"ids": rng.integers(0, 20, (2, 5)).astype(np.int64)}, rng, min_prunable=2
    )
    assert sorted(g.n_units for g in an.prunable) == [6, 8]  # the embedding width is prunable too


# ---------------------------------------------------------------------- layout
def _attention(
    rng: np.random.Generator,
    *,
    runtime_shapes: bool,
    heads: int = 4,
    kv_heads: int = 4,
    head_dim: int = 4,
    seq: int = 5,
    hidden: int = 16,
) -> onnx.ModelProto:
    """x (1, S, hidden) -> q/k/v -> heads -> softmax(q kᵀ) v -> merge -> o-proj (+ residual)."""
    rep = heads // kv_heads
    init = {
        "wq": w(rng, hidden, heads * head_dim),
        "wk": w(rng, hidden, kv_heads * head_dim),
        "wv": w(rng, hidden, kv_heads * head_dim),
        "wo": w(rng, heads * head_dim, hidden),
        "bq": w(rng, heads * head_dim),
        "scale": np.asarray(0.5, F),
        "perm_shape": i64(0, 0, heads, head_dim),
        "kv_shape": i64(0, 0, kv_heads, head_dim),
        "merge": i64(0, 0, heads * head_dim),
        "one": i64(1),
    }
    nodes = [
        node("MatMul", ["x", "wq"], ["q0"]),
        node("Add", ["q0", "bq"], ["q1"]),
        node("MatMul", ["x", "wk"], ["k1"]),
        node("MatMul", ["x", "wv"], ["v1"]),
    ]
    if runtime_shapes:  # TorchScript style: Shape -> Gather -> Unsqueeze -> Concat
        init.update(
            {
                "c0": np.asarray(0, np.int64),
                "c1": np.asarray(1, np.int64),
                "c2": np.asarray(2, np.int64),
                "ax0": i64(0),
                "nh": i64(heads),
                "nkv": i64(kv_heads),
                "hd": i64(head_dim),
            }
        )
        nodes += [
            node("Shape", ["x"], ["xs"]),
            node("Gather", ["xs", "c0"], ["b"], axis=0),
            node("Gather", ["xs", "c1"], ["s"], axis=0),
            node("Unsqueeze", ["b", "ax0"], ["bu"]),
            node("Unsqueeze", ["s", "ax0"], ["su"]),
            node("Concat", ["bu", "su", "nh", "hd"], ["qshape"], axis=0),
            node("Concat", ["bu", "su", "nkv", "hd"], ["kvshape"], axis=0),
            node("Shape", ["x"], ["xs2"]),
            node("Gather", ["xs2", "c0"], ["b2"], axis=0),
            node("Unsqueeze", ["b2", "ax0"], ["b2u"]),
            # hidden taken from x's shape, as TorchScript does for reshape(B, S, hidden)
            node("Gather", ["xs2", "c2"], ["h2"], axis=0),
            node("Unsqueeze", ["h2", "ax0"], ["h2u"]),
            node("Concat", ["b2u", "su", "h2u"], ["mshape"], axis=0),
        ]
        qs, kvs, ms = "qshape", "kvshape", "mshape"
    else:
        qs, kvs, ms = "perm_shape", "kv_shape", "merge"
    nodes += [
        node("Reshape", ["q1", qs], ["q2"]),
        node("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        node("Reshape", ["k1", kvs], ["k2"]),
        node("Transpose", ["k2"], ["k"], perm=[0, 2, 3, 1]),
        node("Reshape", ["v1", kvs], ["v2"]),
        node("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
    ]
    if rep > 1:  # GQA: (B, KV, S, D) -> (B, KV, rep, S, D) -> (B, KV*rep, S, D)
        init.update(
            {
                "ax2": i64(2),
                "kexp": i64(1, kv_heads, rep, head_dim, seq),
                "vexp": i64(1, kv_heads, rep, seq, head_dim),
                "kmerge": i64(1, heads, head_dim, seq),
                "vmerge": i64(1, heads, seq, head_dim),
            }
        )
        nodes += [
            node("Unsqueeze", ["k", "ax2"], ["ku"]),
            node("Expand", ["ku", "kexp"], ["ke"]),
            node("Reshape", ["ke", "kmerge"], ["kk"]),
            node("Unsqueeze", ["v", "ax2"], ["vu"]),
            node("Expand", ["vu", "vexp"], ["ve"]),
            node("Reshape", ["ve", "vmerge"], ["vv"]),
        ]
        kname, vname = "kk", "vv"
    else:
        kname, vname = "k", "v"
    nodes += [
        node("MatMul", ["q", kname], ["sc"]),
        node("Mul", ["sc", "scale"], ["sc2"]),
        node("Softmax", ["sc2"], ["p"], axis=-1),
        node("MatMul", ["p", vname], ["o"]),
        node("Transpose", ["o"], ["o2"], perm=[0, 2, 1, 3]),
        node("Reshape", ["o2", ms], ["o3"]),
        node("MatMul", ["o3", "wo"], ["att"]),
        node("Add", ["x", "att"], ["y"]),
    ]
    return make_model(nodes, [vi("x", [1, seq, hidden])], [vi("y", [1, seq, hidden])], init)


@pytest.mark.parametrize(
    "runtime_shapes", [False, True], ids=["dynamo-constants", "torchscript-shape-chains"]
)
def test_attention_heads_through_reshape_transpose(
    rng: np.random.Generator, runtime_shapes: bool
) -> None:
    proto = _attention(rng, runtime_shapes=runtime_shapes)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 5, 16)).astype(F)}, rng, min_prunable=3)
    (heads,) = [g for g in an.prunable if g.unit == "head"]
    assert heads.n_units == 4 and heads.unit_size == 4
    assert {m.tensor for m in heads.producers if m.role == "weight"} == {"wq", "wk", "wv"}
    (o,) = heads.consumers
    assert o.tensor == "wo" and o.unit_indices(2).tolist() == [8, 9, 10, 11]
    dims = sorted(g.n_units for g in an.prunable if g.unit == "head_dim")
    assert dims == [4, 4]  # q/k head dim (contracted by q·kᵀ) and v head dim


def test_grouped_query_attention(rng: np.random.Generator) -> None:
    proto = _attention(rng, runtime_shapes=False, heads=4, kv_heads=2)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 5, 16)).astype(F)}, rng, min_prunable=3)
    heads = [g for g in an.prunable if g.unit == "head"]
    assert sorted(g.n_units for g in heads) == [
        2,
        2,
    ]  # kv heads (with their query group); query-in-group
    kv = next(g for g in heads if any(m.tensor == "wk" for m in g.producers))
    wq = next(m for m in kv.producers if m.tensor == "wq")
    wk = next(m for m in kv.producers if m.tensor == "wk")
    assert wk.unit_indices(1).tolist() == [4, 5, 6, 7]
    assert wq.unit_indices(1).tolist() == list(range(8, 16))  # both query heads of kv head 1


def test_softmax_over_channels_is_frozen(rng: np.random.Generator) -> None:
    init = {"w1": w(rng, 8, 6), "w2": w(rng, 6, 3)}
    nodes = [
        node("MatMul", ["x", "w1"], ["h"]),
        node("Softmax", ["h"], ["p"], axis=-1),
        node("MatMul", ["p", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [2, 8])], [vi("y", [2, 3])], init)
    an = analyze(ModelIR.from_proto(proto))
    (g,) = [x for x in an.groups if x.n_units == 6]
    assert g.frozen and g.reason.startswith("softmax-axis:")


def test_reduce_sum_over_channels_is_frozen(rng: np.random.Generator) -> None:
    init = {"w1": w(rng, 8, 6)}
    nodes = [node("MatMul", ["x", "w1"], ["h"]), node("ReduceSum", ["h", "ax"], ["y"], keepdims=0)]
    init["ax"] = i64(-1)
    proto = make_model(nodes, [vi("x", [2, 8])], [vi("y", [2])], init)
    an = analyze(ModelIR.from_proto(proto))
    (g,) = [x for x in an.groups if x.n_units == 6]
    assert g.frozen and g.reason.startswith("reduced-by:ReduceSum")


def test_channel_shuffle(rng: np.random.Generator) -> None:
    init = {
        "wa": w(rng, 4, 3, 1, 1),
        "wb": w(rng, 4, 3, 1, 1),
        "w2": w(rng, 2, 8, 1, 1),
        "s5": i64(1, 2, 4, 4, 4),
        "s4": i64(1, 8, 4, 4),
    }
    nodes = [
        node("Conv", ["x", "wa"], ["a"]),
        node("Conv", ["x", "wb"], ["b"]),
        node("Concat", ["a", "b"], ["c"], axis=1),
        node("Reshape", ["c", "s5"], ["c5"]),
        node("Transpose", ["c5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        node("Reshape", ["t5", "s4"], ["sh"]),
        node("Conv", ["sh", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    (g,) = an.prunable  # a's and b's channel k are interleaved: removed together
    assert g.n_units == 4
    assert g.consumers[0].unit_indices(1).tolist() == [2, 3]


def test_flatten_into_gemm(rng: np.random.Generator) -> None:
    init = {"w1": w(rng, 5, 3, 3, 3), "w2": w(rng, 4, 5 * 2 * 2)}
    nodes = [
        node("Conv", ["x", "w1"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("Flatten", ["r"], ["f"], axis=1),
        node("Gemm", ["f", "w2"], ["y"], transB=1),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 4])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.consumers[0].unit_indices(1).tolist() == [4, 5, 6, 7]


def test_squeeze_unsqueeze_and_pooling_resize_pad_prelu(rng: np.random.Generator) -> None:
    init = {
        "w1": w(rng, 6, 3, 1, 1),
        "slope": w(rng, 6, 1, 1),
        "w2": w(rng, 2, 6, 1, 1),
        "ax": i64(0),
        "pads": i64(0, 0, 1, 1, 0, 0, 1, 1),
        "scales": np.asarray([1, 1, 2, 2], F),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c"]),
        node("PRelu", ["c", "slope"], ["p"]),
        node("MaxPool", ["p"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Pad", ["mp", "pads"], ["pd"]),
        node("Resize", ["pd", "", "scales"], ["rs"], mode="nearest"),
        node("Squeeze", ["rs", "ax"], ["sq"]),
        node("Unsqueeze", ["sq", "ax"], ["us"]),
        node("Conv", ["us", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 8, 8])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    (g,) = an.prunable
    assert any(m.tensor == "slope" for m in g.producers)


def test_expand_and_tile_broadcast(rng: np.random.Generator) -> None:
    init = {"w1": w(rng, 8, 6), "w2": w(rng, 6, 3), "shape": i64(2, 3, 6), "ax": i64(0)}
    nodes = [
        node("MatMul", ["x", "w1"], ["h"]),  # (3, 6)
        node("Unsqueeze", ["h", "ax"], ["hu"]),  # (1, 3, 6)
        node("Expand", ["hu", "shape"], ["he"]),  # (2, 3, 6)
        node("Relu", ["he"], ["r"]),
        node("MatMul", ["r", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [3, 8])], [vi("y", [2, 3, 3])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((3, 8)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.n_units == 6


# ---------------------------------------------------------------------- unknown ops
def _custom_middle_model(rng: np.random.Generator, op: str, domain: str) -> onnx.ModelProto:
    init = {
        "w1": w(rng, 6, 3, 1, 1),
        "w2": w(rng, 8, 6, 1, 1),
        "w3": w(rng, 5, 8, 1, 1),
        "w4": w(rng, 2, 5, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "w1"], ["c1"]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node(op, ["c2"], ["m"], name="mystery", domain=domain),
        node("Conv", ["m", "w3"], ["c3"]),
        node("Relu", ["c3"], ["r3"]),
        node("Conv", ["r3", "w4"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [vi("x", [1, 3, 4, 4])],
        [vi("y", [1, 2, 4, 4])],
        [onnx.numpy_helper.from_array(v, k) for k, v in init.items()],
        value_info=[vi("m", [1, 8, 4, 4])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_unknown_custom_op_is_frozen_and_neighbours_still_prune(rng: np.random.Generator) -> None:
    from spa_compiler.groups.analysis import prune_groups

    proto = _custom_middle_model(rng, "MysteryOp", "com.example")
    model = ModelIR.from_proto(proto)
    an = analyze(model)
    assert an.unknown_ops == {"com.example:MysteryOp": 1}
    (around,) = by_producer(an, "c2")
    assert around.frozen and around.reason == "unknown-op:com.example:MysteryOp"
    prunable = {g.id for g in an.prunable}
    assert prunable == {by_producer(an, "c1")[0].id, by_producer(an, "c3")[0].id}
    # the rewrite works around it; onnx.checker still accepts the graph
    before = model.count_params()
    prune_groups(model, random_plan(an, rng), analysis=an)
    onnx.checker.check_model(model.to_proto())
    assert model.count_params() < before


def test_op_left_out_of_the_rules_is_frozen_and_oracle_holds(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = _custom_middle_model(rng, "Sigmoid", "")
    rules = dict(channel_rules.RULES)
    del rules["Sigmoid"]
    monkeypatch.setattr(channel_rules, "RULES", rules)
    import spa_compiler.groups.analysis as cg

    monkeypatch.setattr(cg, "RULES", rules)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng, min_prunable=2)
    assert an.unknown_ops == {"ai.onnx:Sigmoid": 1}
    (around,) = by_producer(an, "c2")
    assert around.frozen and around.reason == "unknown-op:ai.onnx:Sigmoid"


def test_every_registered_rule_is_callable() -> None:
    assert all(callable(r) for r in channel_rules.RULES.values())
    assert "Conv" in channel_rules.RULES and "com.microsoft:FastGelu" in channel_rules.RULES


@pytest.mark.parametrize("layout", ["3d", "4d"])
def test_onnx_attention_op_heads_gqa_and_head_counts(rng: np.random.Generator, layout: str) -> None:
    h, hq, hkv, d = 16, 4, 2, 4
    init = {
        "wq": w(rng, h, hq * d),
        "wk": w(rng, h, hkv * d),
        "wv": w(rng, h, hkv * d),
        "wo": w(rng, hq * d, h),
    }
    nodes = [
        node("MatMul", ["x", "wq"], ["q"]),
        node("MatMul", ["x", "wk"], ["k"]),
        node("MatMul", ["x", "wv"], ["v"]),
    ]
    if layout == "3d":
        nodes += [
            node("Attention", ["q", "k", "v"], ["a"], q_num_heads=hq, kv_num_heads=hkv, is_causal=1)
        ]
    else:
        init.update({"sq": i64(0, 0, hq, d), "skv": i64(0, 0, hkv, d), "sm": i64(0, 0, hq * d)})
        nodes += [
            node("Reshape", ["q", "sq"], ["q4"]),
            node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
            node("Reshape", ["k", "skv"], ["k4"]),
            node("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3]),
            node("Reshape", ["v", "skv"], ["v4"]),
            node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
            node("Attention", ["qt", "kt", "vt"], ["a4"], is_causal=1),
            node("Transpose", ["a4"], ["at"], perm=[0, 2, 1, 3]),
            node("Reshape", ["at", "sm"], ["a"]),
        ]
    nodes += [node("MatMul", ["a", "wo"], ["y"])]
    proto = make_model(
        nodes, [vi("x", [1, 5, h])], [vi("y", [1, 5, h])], init, opset=23, ir_version=10
    )
    an = oracle_all(proto, {"x": rng.standard_normal((1, 5, h)).astype(F)}, rng, min_prunable=3)
    heads = sorted(g.n_units for g in an.prunable if g.unit == "head")
    dims = sorted(g.n_units for g in an.prunable if g.unit == "head_dim")
    assert heads == [2, 2] and dims == [4, 4]
    kv = next(
        g for g in an.prunable if g.unit == "head" and any(m.tensor == "wk" for m in g.producers)
    )
    model = ModelIR.from_proto(proto)
    from spa_compiler.groups.analysis import prune_groups

    a2 = analyze(model, units=ALL_UNITS)
    qk_dim = next(
        g
        for g in a2.prunable
        if g.unit == "head_dim" and any(m.tensor == "wk" for m in g.producers)
    )
    prune_groups(model, {kv.id: [0], qk_dim.id: [1]}, analysis=a2)
    att = next(n for n in model.graph.nodes if n.op == "Attention")
    if layout == "3d":
        assert att.attrs["q_num_heads"] == 2 and att.attrs["kv_num_heads"] == 1
    assert att.attrs["scale"] == pytest.approx(0.5)  # 1/sqrt(4), pinned before the head size shrank


def test_contrib_skip_layernorm(rng: np.random.Generator) -> None:
    h = 8
    init = {
        "w0": w(rng, h, h),
        "g": (1 + w(rng, h)).astype(F),
        "b": w(rng, h),
        "w1": w(rng, h, 12),
        "w2": w(rng, 12, h),
        "w3": w(rng, h, 2),
    }
    nodes = [
        node("MatMul", ["x", "w0"], ["e"]),
        helper.make_node(
            "SkipLayerNormalization",
            ["e", "x", "g", "b"],
            ["n", "", "", "s"],
            name="sln",
            domain="com.microsoft",
            epsilon=1e-5,
        ),
        node("MatMul", ["n", "w1"], ["u"]),
        node("Relu", ["u"], ["a"]),
        node("MatMul", ["a", "w2"], ["d"]),
        node("Add", ["s", "d"], ["r"]),
        node("MatMul", ["r", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [vi("x", [2, 3, h])],
        [vi("y", [2, 3, 2])],
        [onnx.numpy_helper.from_array(v, k) for k, v in init.items()],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=9,
    )
    an = oracle_all(proto, {"x": rng.standard_normal((2, 3, h)).astype(F)}, rng)
    assert not an.unknown_ops
    assert [g.n_units for g in an.prunable] == [12]
    (hidden,) = [g for g in an.groups if g.unit == "hidden"]
    assert hidden.frozen  # the input x is a graph input: frozen whatever the options


@pytest.mark.parametrize(
    ("op_nodes", "extra", "width_after", "reason"),
    [
        ([("CumSum", ["h", "ax"], {})], {"ax": np.asarray(-1, np.int64)}, 6, "cumsum-axis"),
        ([("LogSoftmax", ["h"], {"axis": -1})], {}, 6, "logsoftmax-axis"),
        ([("Hardmax", ["h"], {"axis": -1})], {}, 6, "hardmax-axis"),
        (
            [("Slice", ["h", "st", "en", "ax", "step"], {})],
            {"st": i64(0), "en": i64(6), "ax": i64(-1), "step": i64(2)},
            3,
            "strided-slice",
        ),
        (
            [("Gather", ["h", "perm"], {"axis": 1})],
            {"perm": i64(0, 2, 1, 3, 5, 4)},
            6,
            "gather-indices",
        ),
        (
            [("GatherElements", ["h", "idx"], {"axis": 1})],
            {"idx": np.zeros((2, 6), np.int64)},
            6,
            "data-dependent",
        ),
        ([("Trilu", ["h"], {})], {}, 6, "trilu"),
        ([("TopK", ["h", "k"], {"axis": -1})], {"k": i64(6)}, 6, "topk-axis"),
    ],
    ids=[
        "cumsum",
        "logsoftmax",
        "hardmax",
        "strided-slice",
        "gather-permutation",
        "gather-elements",
        "trilu",
        "topk",
    ],
)
def test_channel_mixing_ops_freeze(
    rng: np.random.Generator, op_nodes: list, extra: dict, width_after: int, reason: str
) -> None:
    init = {"w1": w(rng, 8, 6), "w2": w(rng, width_after, 3), **extra}
    nodes = [node("MatMul", ["x", "w1"], ["h"])]
    for op, ins, attrs in op_nodes:
        outs = ["m", "mi"] if op == "TopK" else ["m"]
        nodes.append(node(op, ins, outs, **attrs))
    nodes.append(node("MatMul", ["m", "w2"], ["y"]))
    proto = make_model(nodes, [vi("x", [2, 8])], [vi("y", [2, 3])], init)
    an = analyze(ModelIR.from_proto(proto), units=ALL_UNITS)
    (g,) = [
        x for x in an.groups if any(m.tensor == "w1" and m.role == "weight" for m in x.producers)
    ]
    assert g.frozen and g.reason.startswith(reason), g.reason


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(rng: np.random.Generator, mode: str) -> None:
    init = {"w1": w(rng, 12, 3, 1, 1), "w2": w(rng, 2, 3, 1, 1)}
    nodes = [
        node("Conv", ["x", "w1"], ["c"]),
        node("DepthToSpace", ["c"], ["d"], blocksize=2, mode=mode),
        node("Conv", ["d", "w2"], ["y"]),
    ]
    proto = make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 8, 8])], init)
    an = oracle_all(proto, {"x": rng.standard_normal((1, 3, 4, 4)).astype(F)}, rng)
    (g,) = an.prunable
    assert g.n_units == 3  # the output channels; the 2 x 2 block positions become pixels
    rows = next(m for m in g.producers if m.tensor == "w1").unit_indices(1).tolist()
    assert rows == ([1, 4, 7, 10] if mode == "DCR" else [4, 5, 6, 7])

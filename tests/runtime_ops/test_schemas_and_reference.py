"""Schemas (checker, shape inference), the NumPy oracles, the decompositions under ORT CPU, and
the channel-rule / cost functions. No compiled library needed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx.shape_inference import InferenceError

from spa_compiler import runtime_ops
from spa_compiler.runtime_ops.monarch_matmul import op as mop
from spa_compiler.runtime_ops.monarch_matmul import reference as mref
from spa_compiler.runtime_ops.nm_sparse_matmul import op as nop
from spa_compiler.runtime_ops.nm_sparse_matmul import reference as nref

from ._models import ELEM, TOL, one_node_model, rel_err, session


def monarch_model(rng, b, r, kb, nq, dtype=np.float32, bias=True, x_dims=None):
    R = rng.standard_normal((b, b * r, kb)).astype(dtype)
    L = rng.standard_normal((b, nq, b * r)).astype(dtype)
    e = ELEM[np.dtype(dtype)]
    ins = [("X", None, e, x_dims or ["B", b * kb]), ("R", R, e, None), ("L", L, e, None)]
    bv = rng.standard_normal(nq * b).astype(dtype) if bias else None
    if bias:
        ins.append(("bias", bv, e, None))
    y_dims = None if x_dims is None else [*x_dims[:-1], nq * b]
    return one_node_model("MonarchMatMul", ins, e, y_dims or ["B", nq * b]), R, L, bv


def nm_model(rng, n, k, dtype=np.float32, bias=True):
    W = nref.magnitude_24(rng.standard_normal((n, k)).astype(dtype))
    v, m = nref.compress(W)
    e = ELEM[np.dtype(dtype)]
    ins = [("X", None, e, ["B", k]), ("values", v, e, None), ("meta", m, TensorProto.UINT8, None)]
    bv = rng.standard_normal(n).astype(dtype) if bias else None
    if bias:
        ins.append(("bias", bv, e, None))
    return one_node_model("NMSparseMatMul", ins, e, ["B", n]), W, v, m, bv


# ---------------------------------------------------------------------- schemas
def test_checker_and_shape_inference_accept_both_ops(rng):
    for model in (monarch_model(rng, 3, 2, 5, 7)[0], nm_model(rng, 12, 16)[0]):
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        y = inferred.graph.output[0].type.tensor_type
        assert y.elem_type == TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in y.shape.dim][0] == "B"


def test_shape_inference_propagates_leading_dims_and_n(rng):
    model, *_ = monarch_model(rng, 4, 1, 3, 5, x_dims=["N", 7, 12])
    model.graph.ClearField("output")
    model.graph.output.append(onnx.helper.make_tensor_value_info("Y", TensorProto.FLOAT, None))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 7, 20]


@pytest.mark.parametrize(
    "case",
    ["monarch-k", "monarch-blocks", "monarch-bias", "nm-k", "nm-meta-rows", "nm-meta-type"],
)
def test_shape_inference_rejects_inconsistent_shapes(rng, case):
    if case.startswith("monarch"):
        model, *_ = monarch_model(rng, 3, 1, 4, 5)
        g = model.graph
        if case == "monarch-k":
            g.input[0].type.tensor_type.shape.dim[1].dim_value = 13
        elif case == "monarch-blocks":
            g.initializer[1].CopyFrom(
                onnx.numpy_helper.from_array(np.zeros((2, 5, 3), np.float32), "L")
            )
        else:
            g.initializer[2].CopyFrom(
                onnx.numpy_helper.from_array(np.zeros(14, np.float32), "bias")
            )
    else:
        model, *_ = nm_model(rng, 8, 16)
        g = model.graph
        if case == "nm-k":
            g.input[0].type.tensor_type.shape.dim[1].dim_value = 24
        elif case == "nm-meta-rows":
            g.initializer[1].CopyFrom(
                onnx.numpy_helper.from_array(np.zeros((9, 2), np.uint8), "meta")
            )
        else:
            g.initializer[1].CopyFrom(
                onnx.numpy_helper.from_array(np.zeros((8, 2), np.int8), "meta")
            )
    with pytest.raises((InferenceError, onnx.checker.ValidationError)):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)


def test_plugin_attributes_are_declared(rng):
    model, *_ = monarch_model(rng, 2, 1, 4, 4)
    model.graph.node[0].attribute.extend(
        [
            onnx.helper.make_attribute("plugin_version", "1"),
            onnx.helper.make_attribute("plugin_namespace", ""),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("blocks", 2))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)


def test_documentation_has_the_readme_sections():
    doc = runtime_ops.documentation()
    for op in ("MonarchMatMul", "NMSparseMatMul"):
        for section in (
            "Description",
            "Inputs",
            "Outputs",
            "Attributes",
            "Constraints",
            "Known issues",
        ):
            assert doc[op][section], (op, section)


# ---------------------------------------------------------------------- Monarch oracle
def test_monarch_reference_equals_its_dense_weight(rng):
    for b, r, kb, nq in [(3, 2, 5, 7), (4, 1, 4, 4), (1, 1, 6, 9), (5, 3, 2, 1)]:
        R = rng.standard_normal((b, b * r, kb))
        L = rng.standard_normal((b, nq, b * r))
        x = rng.standard_normal((2, 3, b * kb))
        bias = rng.standard_normal(nq * b)
        y = mref.monarch_matmul(x, R, L, bias)
        assert y.shape == (2, 3, nq * b)
        np.testing.assert_allclose(y, x @ mref.dense_weight(R, L).T + bias, rtol=1e-12, atol=1e-12)


def test_monarch_square_rank1_is_the_published_monarch_matrix(rng):
    # M[(q,t),(j,s)] = L_t[q, j] R_j[t, s] for b = m = sqrt(n)
    b = 4
    R = rng.standard_normal((b, b, b))
    L = rng.standard_normal((b, b, b))
    m = mref.dense_weight(R, L).reshape(b, b, b, b)  # (q, t, j, s)
    for q, t, j, s in np.ndindex(b, b, b, b):
        assert m[q, t, j, s] == pytest.approx(L[t, q, j] * R[j, t, s])


def test_monarch_projection_recovers_monarch_weights_and_errors_on_bad_blocks(rng):
    R = rng.standard_normal((3, 6, 4))
    L = rng.standard_normal((3, 5, 6))
    w = mref.dense_weight(R, L)
    R2, L2 = mref.project(w, 3, rank=2)
    np.testing.assert_allclose(mref.dense_weight(R2, L2), w, atol=1e-9)
    R1, L1 = mref.project(w, 3, rank=1)
    assert np.linalg.norm(mref.dense_weight(R1, L1) - w) > 1e-3  # rank 1 loses something
    with pytest.raises(ValueError):
        mref.project(w, 4)
    with pytest.raises(ValueError):
        mref.monarch_matmul(np.zeros((2, 13)), R, L)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_monarch_decomposition_matches_reference_in_ort(rng, dtype, bias):
    for b, r, kb, nq in [(3, 2, 5, 7), (4, 1, 16, 16), (1, 1, 9, 5), (6, 1, 3, 2)]:
        model, R, L, bv = monarch_model(rng, b, r, kb, nq, dtype, bias)
        plain = runtime_ops.decompose(model)
        assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
        onnx.checker.check_model(plain, full_check=True)
        s = session(plain)
        for rows in (1, 7, 33):
            x = rng.standard_normal((rows, b * kb)).astype(dtype)
            ref = mref.monarch_matmul(x.astype(np.float64), R, L, bv)
            assert rel_err(s.run(None, {"X": x})[0], ref) < TOL[np.dtype(dtype)]


# ---------------------------------------------------------------------- 2:4 oracle
def test_nm_compress_roundtrip_and_format(rng):
    w = nref.magnitude_24(rng.standard_normal((5, 16)))
    v, m = nref.compress(w)
    assert v.shape == (5, 8) and m.shape == (5, 2) and m.dtype == np.uint8
    np.testing.assert_array_equal(nref.decompress(v, m), w)
    # group 0 of row 0: the two kept columns, in order, and the code in the low nibble
    kept = np.flatnonzero(w[0, :4])
    assert (m[0, 0] & 0xF) == (kept[0] | (kept[1] << 2))
    np.testing.assert_array_equal(v[0, :2], w[0, kept])
    codes = np.concatenate([m & 0xF, m >> 4], axis=None)
    assert set(codes.tolist()) <= set(nref.VALID_CODES)


def test_nm_sparser_groups_keep_explicit_zeros(rng):
    w = np.zeros((2, 8), np.float32)
    w[0, 3] = 1.5
    v, m = nref.compress(w)
    np.testing.assert_array_equal(nref.decompress(v, m), w)


def test_nm_rejects_dense_weights_and_bad_codes(rng):
    with pytest.raises(ValueError, match="not 2:4"):
        nref.compress(np.ones((2, 8)))
    with pytest.raises(ValueError, match="multiple of 8"):
        nref.compress(np.zeros((2, 12)))
    v, m = nref.compress(nref.magnitude_24(rng.standard_normal((2, 8))))
    m[1, 0] = 0x0F  # code 15: i0 = 3, i1 = 3
    with pytest.raises(ValueError, match="invalid 2:4 metadata code"):
        nref.decompress(v, m)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_nm_decomposition_matches_reference_in_ort(rng, dtype, bias):
    for n, k in [(12, 16), (7, 40), (33, 8)]:
        model, W, v, m, bv = nm_model(rng, n, k, dtype, bias)
        plain = runtime_ops.decompose(model)
        onnx.checker.check_model(plain, full_check=True)
        s = session(plain)
        for rows in (1, 5, 20):
            x = rng.standard_normal((rows, k)).astype(dtype)
            ref = nref.nm_sparse_matmul(x.astype(np.float64), v, m, bv)
            assert rel_err(s.run(None, {"X": x})[0], ref) < TOL[np.dtype(dtype)]


def test_decompose_needs_static_weight_shapes(rng):
    model, *_ = monarch_model(rng, 2, 1, 3, 3)
    g = model.graph
    r = g.initializer[0]
    g.input.append(onnx.helper.make_tensor_value_info("R", TensorProto.FLOAT, ["a", "b", "c"]))
    g.initializer.remove(r)
    with pytest.raises(ValueError, match="static"):
        runtime_ops.decompose(model)


# ---------------------------------------------------------------------- core hooks
class _Ctx:
    """A stand-in for spa_compiler.channel_rules.RuleContext that records calls."""

    def __init__(self, ranks):
        self.ranks = ranks
        self.calls = []

    def inp(self, node, i):
        return (
            None
            if i >= len(self.ranks) - 1 or self.ranks[i] is None
            else [f"in{i}.{a}" for a in range(self.ranks[i])]
        )

    def out(self, node, j):
        return [f"y.{a}" for a in range(self.ranks[-1])]

    def same(self, a, b, why):
        self.calls.append(("same", a, b))
        return True

    def freeze(self, terms, reason):
        for t in [terms] if isinstance(terms, str) else terms:
            self.calls.append(("freeze", t, reason.split(":")[0]))

    def freeze_node(self, node, reason):
        self.calls.append(("freeze_node", reason))


class _Node:
    name = "n0"
    op = "X"


def test_channel_rules():
    rules = runtime_ops.channel_rules()
    assert set(rules) == {"spa.ops:MonarchMatMul", "spa.ops:NMSparseMatMul"}
    ctx = _Ctx([3, 3, 3, None, 3])  # X (B, S, K), R, L, no bias, Y (B, S, N)
    rules["spa.ops:MonarchMatMul"](ctx, _Node())
    assert ("same", "in0.0", "y.0") in ctx.calls and ("same", "in0.1", "y.1") in ctx.calls
    assert ("freeze", "in0.2", "monarch-block-structure") in ctx.calls
    assert ("freeze", "y.2", "monarch-block-structure") in ctx.calls
    ctx = _Ctx([2, 2, 2, 1, 2])  # X (B, K), values (N, K/2), meta (N, K/8), bias (N), Y (B, N)
    rules["spa.ops:NMSparseMatMul"](ctx, _Node())
    assert ("freeze", "in0.1", "nm-2") in ctx.calls
    for t in ("in1.0", "in2.0", "in3.0"):
        assert ("same", "y.1", t) in ctx.calls
    assert not any(c[0] == "freeze" and c[1] == "y.1" for c in ctx.calls)


def test_cost_models(rng):
    costs = runtime_ops.cost_models()
    model, *_ = monarch_model(rng, 4, 2, 8, 16)
    node = model.graph.node[0]
    shapes = {"X": [10, 32], "R": [4, 8, 8], "L": [4, 16, 8]}
    macs, nbytes = costs["spa.ops:MonarchMatMul"]
    assert macs(node, shapes) == 10 * 8 * (32 + 64)  # rows * b*r * (K + N)
    assert nbytes(node, shapes, 2) == 2 * (10 * (32 + 64) + 4 * 8 * 8 + 4 * 16 * 8 + 64)
    assert macs(node, {"X": [None, 32], "R": [4, 8, 8], "L": [4, 16, 8]}) is None
    model, *_ = nm_model(rng, 12, 16, bias=False)
    node = model.graph.node[0]
    macs, nbytes = costs["spa.ops:NMSparseMatMul"]
    assert macs(node, {"X": [3, 5, 16], "values": [12, 8]}) == 15 * 12 * 8
    assert nbytes(node, {"X": [3, 5, 16], "values": [12, 8]}, 2) == 2 * (15 * 28 + 96) + 12 * 2
    assert mop.macs([7, 32], [4, 8, 8], [4, 16, 8]) * 1.0 / (7 * 32 * 64) < 0.5
    assert nop.macs([7, 32], [64, 16]) == 7 * 64 * 32 // 2

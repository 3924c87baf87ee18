"""The C++ CPU kernels through ONNX Runtime (the built libspa_ort_ops.so) against the NumPy
oracles: random shapes (odd sizes), float32/float16 (and bfloat16 for 2:4), bias or not, weights
as initializers (repacked once) and as run-time inputs, several threads; bad shapes and bad
metadata are ORT errors, never a crash."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from spa_compiler import runtime_ops
from spa_compiler.runtime_ops.monarch_matmul import reference as mref
from spa_compiler.runtime_ops.nm_sparse_matmul import reference as nref

from ._models import ELEM, TOL, one_node_model, rel_err, session

MONARCH_SHAPES = [  # (b, r, kb, nq)
    (1, 1, 1, 1),
    (3, 2, 5, 7),
    (4, 1, 16, 16),
    (5, 3, 7, 2),
    (24, 1, 32, 32),
    (2, 1, 33, 17),
    (8, 2, 12, 9),
]


def _monarch(rng, b, r, kb, nq, dtype, bias, const_weights=True, x_dims=None):
    e = ELEM[np.dtype(dtype)]
    R = rng.standard_normal((b, b * r, kb)).astype(dtype)
    L = rng.standard_normal((b, nq, b * r)).astype(dtype)
    bv = rng.standard_normal(nq * b).astype(dtype) if bias else None
    ins = [
        ("X", None, e, x_dims or ["B", "K"]),
        ("R", R if const_weights else None, e, list(R.shape)),
        ("L", L if const_weights else None, e, list(L.shape)),
    ]
    if bias:
        ins.append(("bias", bv if const_weights else None, e, [nq * b]))
    return one_node_model("MonarchMatMul", ins, e, None if x_dims else ["B", "N"]), R, L, bv


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_monarch_cpu_matches_reference(rng, ort_lib, dtype, bias, threads):
    for b, r, kb, nq in MONARCH_SHAPES:
        model, R, L, bv = _monarch(rng, b, r, kb, nq, dtype, bias)
        s = session(model, ort_lib, threads)
        for rows in (1, 3, 17, 130):
            x = rng.standard_normal((rows, b * kb)).astype(dtype)
            y = s.run(None, {"X": x})[0]
            assert y.shape == (rows, nq * b) and y.dtype == dtype
            ref = mref.monarch_matmul(x.astype(np.float64), R, L, bv)
            assert rel_err(y, ref) < TOL[np.dtype(dtype)], (b, r, kb, nq, rows)


def test_monarch_cpu_runtime_weights_and_leading_axes(rng, ort_lib):
    b, r, kb, nq = 3, 2, 5, 7
    model, *_ = _monarch(
        rng, b, r, kb, nq, np.float32, True, const_weights=False, x_dims=[2, "S", b * kb]
    )
    s = session(model, ort_lib, 2)
    for _ in range(3):  # fresh weights each run: nothing may be cached from the first
        R = rng.standard_normal((b, b * r, kb)).astype(np.float32)
        L = rng.standard_normal((b, nq, b * r)).astype(np.float32)
        bv = rng.standard_normal(nq * b).astype(np.float32)
        x = rng.standard_normal((2, 5, b * kb)).astype(np.float32)
        y = s.run(None, {"X": x, "R": R, "L": L, "bias": bv})[0]
        assert y.shape == (2, 5, nq * b)
        assert rel_err(y, mref.monarch_matmul(x.astype(np.float64), R, L, bv)) < 1e-5


def test_monarch_cpu_zero_rows(rng, ort_lib):
    model, *_ = _monarch(rng, 3, 1, 4, 5, np.float32, True)
    y = session(model, ort_lib).run(None, {"X": np.zeros((0, 12), np.float32)})[0]
    assert y.shape == (0, 15)


def test_monarch_cpu_bad_shapes_are_ort_errors(rng, ort_lib):
    model, *_ = _monarch(rng, 3, 2, 5, 7, np.float32, True)
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="last axis must be b\\*kb = 15"):
        s.run(None, {"X": np.ones((4, 16), np.float32)})
    # weights inconsistent with each other (run-time inputs): the kernel's own check
    model, *_ = _monarch(rng, 3, 2, 5, 7, np.float32, False, const_weights=False)
    model.graph.input[2].type.tensor_type.shape.dim[2].dim_value = 5
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="does not match R"):
        s.run(
            None,
            {
                "X": np.ones((2, 15), np.float32),
                "R": np.ones((3, 6, 5), np.float32),
                "L": np.ones((3, 7, 5), np.float32),
            },
        )


def _nm(rng, n, k, dtype, bias, const_weights=True):
    e = ELEM[np.dtype(dtype)]
    W = nref.magnitude_24(rng.standard_normal((n, k)).astype(dtype))
    v, m = nref.compress(W)
    bv = rng.standard_normal(n).astype(dtype) if bias else None
    ins = [
        ("X", None, e, ["B", "K"]),
        ("values", v if const_weights else None, e, list(v.shape)),
        ("meta", m if const_weights else None, TensorProto.UINT8, list(m.shape)),
    ]
    if bias:
        ins.append(("bias", bv if const_weights else None, e, [n]))
    return one_node_model("NMSparseMatMul", ins, e, ["B", "N"]), v, m, bv


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_nm_cpu_matches_reference(rng, ort_lib, dtype, bias, threads):
    for n, k in [(1, 8), (12, 16), (37, 48), (130, 24), (129, 520)]:
        model, v, m, bv = _nm(rng, n, k, dtype, bias)
        s = session(model, ort_lib, threads)
        for rows in (1, 15, 16, 17, 70):
            x = rng.standard_normal((rows, k)).astype(dtype)
            y = s.run(None, {"X": x})[0]
            assert y.shape == (rows, n) and y.dtype == dtype
            ref = nref.nm_sparse_matmul(x.astype(np.float64), v, m, bv)
            assert rel_err(y, ref) < TOL[np.dtype(dtype)], (n, k, rows)


def test_nm_cpu_bfloat16(rng, ort_lib):
    """bfloat16 through ORT: inputs and the model's weights as bf16 bit patterns."""
    n, k, rows = 24, 32, 9
    W = nref.magnitude_24(rng.standard_normal((n, k)).astype(np.float32))
    v, m = nref.compress(W)
    to_bf16 = lambda a: (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    from_bf16 = lambda a: (a.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    vb = to_bf16(v)
    values = onnx.helper.make_tensor(
        "values", TensorProto.BFLOAT16, list(v.shape), vb.tobytes(), raw=True
    )
    model = one_node_model(
        "NMSparseMatMul",
        [("X", None, TensorProto.BFLOAT16, ["B", k]), ("meta", m, TensorProto.UINT8, None)],
        TensorProto.BFLOAT16,
        ["B", n],
    )
    model.graph.node[0].input[:] = ["X", "values", "meta"]
    model.graph.initializer.append(values)
    onnx.checker.check_model(model, full_check=True)
    s = session(model, ort_lib)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    xb = to_bf16(x)
    out = np.full((rows, n), 0x7FC0, np.uint16)  # poisoned with NaN
    binding = s.io_binding()
    binding.bind_ortvalue_input(
        "X", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(xb, TensorProto.BFLOAT16)
    )
    binding.bind_ortvalue_output(
        "Y", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(out, TensorProto.BFLOAT16)
    )
    s.run_with_iobinding(binding)
    got = from_bf16(out)
    ref = nref.nm_sparse_matmul(from_bf16(xb).astype(np.float64), from_bf16(vb), m)
    assert rel_err(got, ref) < 1e-2


def test_nm_cpu_runtime_weights(rng, ort_lib):
    model, *_ = _nm(rng, 20, 32, np.float32, True, const_weights=False)
    s = session(model, ort_lib, 2)
    for _ in range(3):
        W = nref.magnitude_24(rng.standard_normal((20, 32)).astype(np.float32))
        v, m = nref.compress(W)
        bv = rng.standard_normal(20).astype(np.float32)
        x = rng.standard_normal((6, 32)).astype(np.float32)
        y = s.run(None, {"X": x, "values": v, "meta": m, "bias": bv})[0]
        assert rel_err(y, nref.nm_sparse_matmul(x.astype(np.float64), v, m, bv)) < 1e-5


def test_nm_cpu_bad_shapes_and_metadata_are_ort_errors(rng, ort_lib):
    model, v, m, _ = _nm(rng, 8, 16, np.float32, False)
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="last axis must be K = 16"):
        s.run(None, {"X": np.ones((3, 24), np.float32)})
    # an invalid code in a constant meta: the session still loads; every run reports it
    bad = m.copy()
    bad[3, 1] = (m[3, 1] & 0x0F) | 0xF0  # group 3 (high nibble of byte 1): code 15
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(bad, "meta"))
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="invalid 2:4 metadata code 15 at row 3, group 3"):
        s.run(None, {"X": np.ones((3, 16), np.float32)})
    # and in a run-time meta
    model, *_ = _nm(rng, 8, 16, np.float32, False, const_weights=False)
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="invalid 2:4 metadata code"):
        s.run(None, {"X": np.ones((3, 16), np.float32), "values": v, "meta": bad})
    for d, name in zip(
        model.graph.input[2].type.tensor_type.shape.dim, ("rows", "bytes"), strict=True
    ):
        d.dim_param = name  # let the wrong shape reach the kernel's own check
    s = session(model, ort_lib)
    with pytest.raises(Exception, match="meta \\[8, 3\\] must be \\(8, 2\\)"):
        s.run(
            None,
            {"X": np.ones((3, 16), np.float32), "values": v, "meta": np.zeros((8, 3), np.uint8)},
        )


def test_kernels_agree_with_the_decomposition(rng, ort_lib):
    """Three-way agreement on CPU: kernel == decomposition == reference, one model each op."""
    model, R, L, bv = _monarch(rng, 4, 2, 6, 5, np.float32, True)
    x = rng.standard_normal((9, 24)).astype(np.float32)
    a = session(model, ort_lib).run(None, {"X": x})[0]
    c = session(runtime_ops.decompose(model)).run(None, {"X": x})[0]
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
    model, v, m, bv = _nm(rng, 16, 32, np.float32, True)
    x = rng.standard_normal((9, 32)).astype(np.float32)
    a = session(model, ort_lib).run(None, {"X": x})[0]
    c = session(runtime_ops.decompose(model)).run(None, {"X": x})[0]
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


def test_library_paths(libs, monkeypatch, tmp_path):
    assert runtime_ops.ort_library_path() == libs[runtime_ops.ORT_LIBRARY]
    assert runtime_ops.trt_plugin_path() == libs[runtime_ops.TRT_LIBRARY]
    from spa_compiler.errors import MissingRequirementError

    monkeypatch.setenv("SPA_RUNTIME_OPS_LIB_DIR", str(tmp_path))
    with pytest.raises(MissingRequirementError, match="is not built") as e:
        runtime_ops.ort_library_path()
    assert "python -m spa_compiler.runtime_ops.build" in (e.value.hint or "")

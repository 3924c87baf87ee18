"""The CUDA kernels through ONNX Runtime's CUDA provider against the NumPy oracles: outputs
poisoned with NaN before each run, fresh inputs each run, every node forced onto the GPU
(session.disable_cpu_ep_fallback). Needs onnxruntime-gpu and a GPU (marker `gpu`); builds the
CUDA library (nvcc, cuSPARSELt) once per session. benchmarks/runtime_ops/gpu_run.py runs the same
checks, and the timings, on the H200."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from spa_compiler import runtime_ops
from spa_compiler.runtime_ops.monarch_matmul import reference as mref
from spa_compiler.runtime_ops.nm_sparse_matmul import reference as nref

from ._models import ELEM, one_node_model, rel_err

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def cuda_lib():
    from spa_compiler.runtime_ops.build import build, find_nvcc, have_toolchain

    if have_toolchain() or not find_nvcc():
        pytest.skip("the CUDA library needs cmake, a C++ compiler and nvcc")
    return build(cuda=True, trt=False)[runtime_ops.ORT_CUDA_LIBRARY]


def _run_poisoned(model, lib, x: np.ndarray, y_shape) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.register_custom_ops_library(str(lib))
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])
    out = ort.OrtValue.ortvalue_from_numpy(np.full(y_shape, np.nan, x.dtype), "cuda", 0)
    b = s.io_binding()
    b.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    b.bind_ortvalue_output("Y", out)
    s.run_with_iobinding(b)
    return out.numpy()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_monarch_cuda_matches_reference(rng, cuda_lib, dtype, bias):
    e = ELEM[np.dtype(dtype)]
    for b, r, kb, nq in [(4, 1, 16, 16), (16, 1, 48, 192), (3, 2, 5, 7), (24, 1, 32, 32)]:
        R = rng.standard_normal((b, b * r, kb)).astype(dtype)
        L = rng.standard_normal((b, nq, b * r)).astype(dtype)
        bv = rng.standard_normal(nq * b).astype(dtype) if bias else None
        ins = [("X", None, e, ["B", b * kb]), ("R", R, e, None), ("L", L, e, None)]
        if bias:
            ins.append(("bias", bv, e, None))
        model = one_node_model("MonarchMatMul", ins, e, ["B", nq * b])
        for rows in (1, 37, 300):
            x = rng.standard_normal((rows, b * kb)).astype(dtype)
            y = _run_poisoned(model, cuda_lib, x, (rows, nq * b))
            ref = mref.monarch_matmul(x.astype(np.float64), R, L, bv)
            assert rel_err(y, ref) < (3e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_nm_cuda_matches_reference(rng, cuda_lib, bias):
    for n, k in [(64, 64), (96, 128), (768, 384)]:
        w = nref.magnitude_24(rng.standard_normal((n, k)).astype(np.float16))
        v, m = nref.compress(w)
        bv = rng.standard_normal(n).astype(np.float16) if bias else None
        h = TensorProto.FLOAT16
        ins = [
            ("X", None, h, ["B", k]),
            ("values", v, h, None),
            ("meta", m, TensorProto.UINT8, None),
        ]
        if bias:
            ins.append(("bias", bv, h, None))
        model = one_node_model("NMSparseMatMul", ins, h, ["B", n])
        for rows in (1, 37, 300):
            x = rng.standard_normal((rows, k)).astype(np.float16)
            y = _run_poisoned(model, cuda_lib, x, (rows, n))
            assert rel_err(y, nref.nm_sparse_matmul(x.astype(np.float64), v, m, bv)) < 3e-3

"""End to end: `spa-compile -p "...sparsify-nm{form=op}..."` writes a model with NMSparseMatMul nodes that
runs in ONNX Runtime CPU with the runtime_ops library and computes what the dense-pattern compile of
the same model computes (issue 15's Done-when, the op form; the H200 run of the same flow on ORT CUDA
is benchmarks/nm/op_model.py). The input file is left unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tests.helpers import make_model


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    f = np.float32
    return make_model(
        [helper.make_node("MatMul", ["x", "w1"], ["a"], name="up"),
         helper.make_node("Relu", ["a"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="down")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        {"w1": rng.standard_normal((64, 128)).astype(f), "w2": rng.standard_normal((64, 128)).astype(f),
         "b2": rng.standard_normal(64).astype(f)},
    )


def test_cli_op_form_runs_in_ort_cpu_and_matches_the_dense_pattern(tmp_path: Path, ort_lib: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "m.onnx"
    onnx.save(_model(rng), src)
    before = src.read_bytes()
    outs = {}
    for form in ("dense", "op"):
        out = tmp_path / f"{form}.onnx"
        proc = subprocess.run(
            [sys.executable, "-m", "spa_compiler", str(src), "-o", str(out), "--no-measure", "--target", "ort-cpu",
             "-p", f"cleanup,sparsify-nm{{keep=all,criterion=magnitude,form={form}}},cleanup"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[form] = out
    ops = [n.op_type for n in onnx.load(str(outs["op"])).graph.node]
    assert ops.count("NMSparseMatMul") == 2 and "MatMul" not in ops and "Gemm" not in ops
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(ort_lib))
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y_op = ort.InferenceSession(str(outs["op"]), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y_dense = ort.InferenceSession(str(outs["dense"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y_op, y_dense, rtol=1e-4, atol=1e-4)
    assert src.read_bytes() == before

"""TensorRT engine builds (spa_compiler.latency.tensorrt) and the fp16 conversion they share with
ORT-CUDA.

The `tensorrt` tests need `tensorrt` or `tensorrt_rtx_bindings` and are skipped without them. With
TensorRT-RTX they build ahead of time for SM 8.9 on a machine without a GPU (about 0.1-0.2 s per
tiny model on 2 CPU cores). Full TensorRT needs a GPU to build, so there they are skipped unless
torch sees one.

The fp16-conversion and CUDA-provider tests at the end need neither TensorRT nor a GPU (they sit
here because the conversion serves both back ends; see spa_compiler/latency/ort_cuda.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa_compiler.errors import SpaError, UnsupportedModelError, UsageError
from spa_compiler.latency import tensorrt as trt_mod
from spa_compiler.latency.ort_cuda import (
    convert_float16,
    cuda_available,
    measure_ort_cuda,
    providers_for,
)
from spa_compiler.ort import make_session, random_feeds
from tests.helpers import TOL, conv_chain_model


def _trt_or_skip() -> ModuleType:
    """TensorRT-RTX if installed (builds without a GPU), else full TensorRT with a GPU."""
    for name in ("tensorrt_rtx_bindings", "tensorrt"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if trt_mod.flavor(mod) == "tensorrt":
            torch = pytest.importorskip("torch")
            if not torch.cuda.is_available():
                pytest.skip("full TensorRT builds need a GPU")
        return mod
    pytest.skip("neither tensorrt nor tensorrt_rtx_bindings is installed")


@pytest.fixture(scope="module")
def trt() -> ModuleType:
    return _trt_or_skip()


def _conv_matmul(batch: int | str = 1, *, opset: int = 17, ir_version: int = 9) -> onnx.ModelProto:
    """x(b,3,8,8) -> Conv(8) -> Relu -> Reshape(b,512) -> MatMul(16) -> y; MatMul weights 2:4."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    m = rng.standard_normal((512, 16)).astype(np.float32)
    m.reshape(128, 4, 16)[:, :2, :] = 0.0  # 2 of every 4 along the reduction axis
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(m, "m"),
            numpy_helper.from_array(np.array([-1, 512], np.int64), "shape"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _aot(trt: ModuleType) -> str | None:
    """Target: SM 8.9 ahead of time on TensorRT-RTX, the GPU present with full TensorRT."""
    return "8.9" if trt_mod.flavor(trt) == "tensorrt-rtx" else None


@pytest.mark.tensorrt
@pytest.mark.parametrize("sparse", [False, True])
def test_builds_conv_matmul_engine(trt: ModuleType, tmp_path: Path, sparse: bool) -> None:
    path = _save(_conv_matmul(), tmp_path / "m.onnx")
    out = tmp_path / "m.engine"
    r = trt_mod.build_engine(
        path, compute_capability=_aot(trt), sparse_weights=sparse, module=trt, output_path=out
    )
    assert r.ok, r.log
    assert r.engine is not None and r.engine_bytes == len(r.engine) > 0
    assert out.read_bytes() == r.engine
    assert r.runtime.startswith(("TensorRT", "TensorRT-RTX")) and r.seconds > 0
    if trt_mod.flavor(trt) == "tensorrt-rtx":
        assert r.compute_capability == "8.9"


@pytest.mark.tensorrt
def test_builds_fp16(trt: ModuleType, tmp_path: Path) -> None:
    path = _save(_conv_matmul(), tmp_path / "m.onnx")
    r = trt_mod.build_engine(path, compute_capability=_aot(trt), fp16=True, module=trt)
    assert r.ok, r.log


@pytest.mark.tensorrt
def test_dynamic_batch_builds_with_a_profile_from_hints(trt: ModuleType, tmp_path: Path) -> None:
    path = _save(_conv_matmul(batch="N"), tmp_path / "dyn.onnx")
    fixed = trt_mod.build_engine(
        path, compute_capability=_aot(trt), shapes={"x": [4, 3, 8, 8]}, module=trt
    )
    assert fixed.ok, fixed.log
    ranged = trt_mod.build_engine(
        path,
        compute_capability=_aot(trt),
        module=trt,
        shapes={"x": ([1, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8])},
    )
    assert ranged.ok, ranged.log
    with pytest.raises(UsageError, match=r"input 'x' has dynamic dimensions \[-1, 3, 8, 8\]") as e:
        trt_mod.build_engine(path, compute_capability=_aot(trt), module=trt)
    assert "--input-shape x:Nx3x8x8" in e.value.one_line()
    with pytest.raises(UsageError, match="does not fit"):
        trt_mod.build_engine(
            path, compute_capability=_aot(trt), shapes={"x": [4, 3, 9, 8]}, module=trt
        )
    with pytest.raises(UsageError, match="min <= opt <= max"):
        trt_mod.build_engine(
            path,
            compute_capability=_aot(trt),
            module=trt,
            shapes={"x": ([8, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8])},
        )
    with pytest.raises(UsageError, match="not network inputs"):
        trt_mod.build_engine(path, compute_capability=_aot(trt), shapes={"z": [1]}, module=trt)


@pytest.mark.tensorrt
def test_parser_errors_are_one_line(trt: ModuleType, tmp_path: Path) -> None:
    # CumProd is new in opset 26; the parser looks it up as a plugin and fails
    node = helper.make_node("CumProd", ["x", "axis"], ["y"], name="cumprod")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(np.array(1, np.int64), "axis")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)], ir_version=10)
    path = _save(model, tmp_path / "cumprod.onnx")
    with pytest.raises(
        UnsupportedModelError, match=r"cannot parse cumprod.onnx: node 0 'cumprod' \(CumProd\)"
    ) as e:
        trt_mod.build_engine(path, compute_capability=_aot(trt), module=trt)
    assert "\n" not in e.value.one_line()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(UnsupportedModelError, match="cannot parse garbage.onnx"):
        trt_mod.build_engine(garbage, compute_capability=_aot(trt), module=trt)
    with pytest.raises(UsageError, match="no ONNX file"):
        trt_mod.build_engine(tmp_path / "missing.onnx", module=trt)


@pytest.mark.tensorrt
@pytest.mark.parametrize(("ir_version", "opset"), [(10, 17), (11, 21), (13, 23)])
def test_parser_accepts_ir_and_opsets(
    trt: ModuleType, tmp_path: Path, ir_version: int, opset: int
) -> None:
    path = _save(_conv_matmul(opset=opset, ir_version=ir_version), tmp_path / "m.onnx")
    assert trt_mod.build_engine(path, compute_capability=_aot(trt), module=trt).ok


@pytest.mark.tensorrt
def test_rtx_refuses_hopper(trt: ModuleType, tmp_path: Path) -> None:
    if trt_mod.flavor(trt) != "tensorrt-rtx":
        pytest.skip("TensorRT-RTX only")
    path = _save(_conv_matmul(), tmp_path / "m.onnx")
    with pytest.raises(
        UsageError, match=r"compute capability 9.0; it supports 7.5, 8.0, 8.6, 8.9, 12.0"
    ):
        trt_mod.build_engine(path, compute_capability="9.0", module=trt)
    assert (
        trt_mod.build_engine(path, compute_capability="sm86", module=trt).compute_capability
        == "sm86"
    )


def test_trt_module_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="unknown TensorRT module"):
        trt_mod.trt_module("tensorrt_llm")
    monkeypatch.setenv("SPA_TENSORRT_MODULE", "tensorrt_llm")
    with pytest.raises(UsageError, match="unknown TensorRT module 'tensorrt_llm'"):
        trt_mod.trt_module()
    monkeypatch.delenv("SPA_TENSORRT_MODULE")

    def no_import(name: str, *a: Any, **k: Any) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(trt_mod.importlib, "import_module", no_import)
    with pytest.raises(SpaError, match="no TensorRT Python module") as e:
        trt_mod.trt_module()
    assert "pip install tensorrt-rtx-cu13-libs" in e.value.one_line()


def test_time_engine_without_a_gpu_says_so() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SpaError, match="needs a CUDA GPU"):
        trt_mod.time_engine(b"")


# -- fp16 conversion (no TensorRT needed) ---------------------------------------------------------


def test_convert_float16_keeps_io_and_matches_fp32() -> None:
    model = conv_chain_model(np.random.default_rng(0), residual=True)
    half = convert_float16(model)
    onnx.checker.check_model(half, full_check=True)
    onnx.shape_inference.infer_shapes(half, strict_mode=True)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT]
    assert all(
        t.data_type == TensorProto.FLOAT16
        for t in half.graph.initializer
        if t.data_type != TensorProto.INT64
    )
    feeds = random_feeds(model)
    ref = make_session(model).run(None, feeds)[0]
    got = make_session(half).run(None, feeds)[0]
    assert got.dtype == np.float32
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got / scale, ref / scale, rtol=0, atol=5 * TOL["fp16"]["rtol"])
    assert (
        convert_float16(model) is not model
        and model.graph.initializer[0].data_type == TensorProto.FLOAT
    )


def test_convert_float16_attributes_and_float32_inputs() -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], value_float=2.0, name="k"),
        helper.make_node("Mul", ["x", "k"], ["a"], name="mul"),
        helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["a", "idxf"], ["b"], name="add"),
        helper.make_node("Resize", ["b", "", "scales"], ["y"], mode="nearest", name="resize"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1, 2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    for keep in (True, False):
        half = convert_float16(model, keep_io_types=keep)
        onnx.checker.check_model(half, full_check=True)
        onnx.shape_inference.infer_shapes(half, strict_mode=True)
        inits = {t.name: t.data_type for t in half.graph.initializer}
        assert inits["scales"] == TensorProto.FLOAT  # Resize scales must stay float32
        cast = next(n for n in half.graph.node if n.name == "cast")
        assert cast.attribute[0].i == TensorProto.FLOAT16
        const = next(n for n in half.graph.node if n.name == "k")
        assert (
            const.attribute[0].name == "value"
            and const.attribute[0].t.data_type == TensorProto.FLOAT16
        )
        out_type = half.graph.output[0].type.tensor_type.elem_type
        assert out_type == (TensorProto.FLOAT if keep else TensorProto.FLOAT16)
    feeds = {
        "x": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2),
        "idx": np.ones((1, 1, 2, 2), np.int64),
    }
    ref = make_session(model).run(None, feeds)[0]
    got = make_session(convert_float16(model)).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_ort_cuda_missing_provider_is_a_clear_error() -> None:
    if cuda_available():
        pytest.skip("the CUDA provider is present")
    model = conv_chain_model(np.random.default_rng(0))
    with pytest.raises(UsageError, match="no CUDA execution provider") as e:
        measure_ort_cuda(model, random_feeds(model))
    assert "onnxruntime-gpu" in e.value.one_line()
    assert providers_for("ort-cuda")[0] == "CUDAExecutionProvider"
    with pytest.raises(UsageError):
        providers_for("tensorrt")

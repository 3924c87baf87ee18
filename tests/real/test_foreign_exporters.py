"""Real models from other exporters (models_zoo.foreign), analysed and compiled through the CLI.

Paddle2ONNX: PaddleOCR's detector, recognizer and classifier as shipped in rapidocr-onnxruntime
(symbolic spatial dims, batch -1, a shared '?' dim name). Hugging Face Optimum: MiniLM exported by
optimum-onnx in its own environment. Slow: run with --run-slow after scripts/install_real.sh
(--optimum for the Optimum model); each test skips cleanly when its package is absent.

What is checked, as a new user would see it: `inspect` and `inspect --groups` without any hint
(exit 0, groups found), `compile` with the hint (exit 0, report "ok", a valid model with fewer
parameters and the same interface: names, order, dtypes, and the symbolic dims kept), and the
compiled model runs under ONNX Runtime at the compiled shape and at another one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_compiler.errors import MissingRequirementError
from spa_compiler.models_zoo import foreign

pytestmark = [pytest.mark.slow, pytest.mark.real]


def _cli(*argv: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spa_compiler", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    return r.stdout


def _io(model: onnx.ModelProto) -> list[tuple[str, str, int, list[object]]]:
    out = []
    for kind, vis in (("in", model.graph.input), ("out", model.graph.output)):
        for v in vis:
            dims = [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append((kind, v.name, v.type.tensor_type.elem_type, dims))
    return out


def _hints(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [a for k, v in shapes.items() for a in ("--input-shape", f"{k}:{'x'.join(map(str, v))}")]


def _analyse_and_compile(src: Path, shapes: dict[str, tuple[int, ...]], tmp_path: Path) -> dict:
    info = json.loads(_ok(_cli("inspect", "--json", str(src))))  # no hint needed to inspect
    assert info["prunable_groups"] > 0, info
    groups = _ok(_cli("inspect", "--groups", str(src)))
    assert "prunable" in groups
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    _ok(_cli(str(src), "-o", str(out), "--report", str(report), "--runs", "5", *_hints(shapes)))
    data = json.loads(report.read_text())
    assert data["status"] == "ok", data.get("error")
    onnx.checker.check_model(str(out), full_check=True)
    before, after = onnx.load(src), onnx.load(out)
    # the interface (names, order, dtypes) and the declared dims, symbolic ones included, are kept
    assert _io(after) == _io(before)
    assert data["after"]["params"] < data["before"]["params"], (data["before"], data["after"])
    return data


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("name", list(foreign.PADDLE_OCR))
def test_paddle2onnx_ocr_models(name: str, tmp_path: Path) -> None:
    try:
        src = foreign.paddle_ocr_path(name)
    except MissingRequirementError as e:
        pytest.skip(e.one_line())
    _, shapes = foreign.PADDLE_OCR[name]
    data = _analyse_and_compile(src, shapes, tmp_path)
    print(f"{name}: params x{data['after']['params'] / data['before']['params']:.3f}, "
          f"paired latency x{data['after']['paired']['ratio']:.3f}")
    rng = np.random.default_rng(0)
    # the compiled shape, and another one (symbolic dims stay symbolic)
    n, c, h, w = shapes["x"]
    for shape in ((n, c, h, w), (2, c, h, w + 32)):
        outs = _run(tmp_path / "small.onnx", {"x": rng.standard_normal(shape).astype(np.float32)})
        assert all(np.isfinite(o).all() for o in outs)
        assert outs[0].shape[0] == shape[0]


def test_optimum_minilm(tmp_path: Path) -> None:
    try:
        src = foreign.optimum_minilm_path()
    except MissingRequirementError as e:
        pytest.skip(e.one_line())
    m = onnx.load(src)
    # Optimum's conventions: these inputs and dim names, last_hidden_state, opset >= 14
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    assert [o.name for o in m.graph.output] == ["last_hidden_state"]
    data = _analyse_and_compile(src, foreign.OPTIMUM_SHAPES, tmp_path)
    print(f"optimum minilm: params x{data['after']['params'] / data['before']['params']:.3f}, "
          f"paired latency x{data['after']['paired']['ratio']:.3f}")
    for b, s in ((1, 16), (2, 24)):
        feeds = {"input_ids": np.full((b, s), 101, np.int64), "attention_mask": np.ones((b, s), np.int64),
                 "token_type_ids": np.zeros((b, s), np.int64)}
        (hidden,) = _run(tmp_path / "small.onnx", feeds)
        assert hidden.shape == (b, s, 384) and np.isfinite(hidden).all()

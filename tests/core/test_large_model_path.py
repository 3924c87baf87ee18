"""A model past protobuf's 2 GB limit, simulated by lowering the limit: an external-data decoder
loads, compiles with calibration (layer-by-layer re-fit, Hessians spilled) and is written with
external data (what the 1B case of benchmarks/cost does at full size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_compiler import ir as ir_mod
from spa_compiler import protos, validation
from spa_compiler.criteria import spill


def test_external_data_decoder_past_the_limit_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spa_compiler import models_zoo
    from spa_compiler.compile import compile_model
    from spa_compiler.ir import ModelIR
    from spa_compiler.report import Report

    src = models_zoo.build("tiny_llama", "torchscript")
    proto = onnx.load(str(src))
    limit = protos.proto_bytes(proto) // 4  # the model is "4 x too large for one protobuf"
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save_model(proto, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    for mod in (protos, validation, ir_mod):
        monkeypatch.setattr(mod, "EXTERNAL_DATA_THRESHOLD", limit)
    monkeypatch.setenv("SPA_COMPILER_HESSIAN_MB", "0")  # every Hessian waits on disk
    monkeypatch.setenv("SPA_COMPILER_SPILL_DIR", str(tmp_path))
    ModelIR.load(folder / "model.onnx")  # validation of a model past the limit (was refused)
    shapes = models_zoo.default_shapes("tiny_llama")
    (name, shape), = shapes.items()
    rng = np.random.default_rng(0)
    calib = [{name: rng.integers(0, 64, size=shape, dtype=np.int64)} for _ in range(4)]
    spilled = spill.stats()["spilled"]
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    report = Report()
    compile_model(folder / "model.onnx", out, pipeline="cleanup,prune-ziplm{criterion=obs,units=neuron,ratio=0.25},cleanup",
                  target="ort-cpu", measure_latency=False, validate="end", input_shapes=shapes, calibration=calib, report=report, seed=0)
    assert report.to_dict()["status"] == "ok"
    assert spill.stats()["spilled"] > spilled
    assert (out.parent / "model.onnx.data").exists()  # written with external data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("spa-hessian-")] == []
    ModelIR.load(out)

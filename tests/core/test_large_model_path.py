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
    # the report's digest of what was written, taken past the limit (the 1B compile failed there)
    assert report.output["sha256_lowered"] == protos.digest(onnx.load(str(out)))
    assert spill.stats()["spilled"] > spilled
    assert (out.parent / "model.onnx.data").exists()  # written with external data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("spa-hessian-")] == []
    ModelIR.load(out)


def test_digest_of_a_model_past_the_limit_hashes_every_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit the digest never serializes the whole model (protobuf refuses 2 GB: the 1B
    compile's report failed there), and still changes with any single weight."""
    from spa_compiler import models_zoo

    proto = onnx.load(str(models_zoo.build("tiny_llama", "torchscript")))
    small = protos.digest(proto)
    monkeypatch.setattr(protos, "EXTERNAL_DATA_THRESHOLD", protos.proto_bytes(proto) // 4)
    large = protos.digest(proto)
    assert large != small and len(large) == 64
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    assert protos.digest(copy) == large
    t = max(copy.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(t).copy()
    arr.flat[7] += 1.0
    t.raw_data = arr.tobytes()
    assert protos.digest(copy) != large
    copy.CopyFrom(proto)
    copy.graph.node[0].name += "x"  # the structure counts too
    assert protos.digest(copy) != large
    assert proto.graph.initializer[0].HasField("raw_data")  # the model hashed is left as it was

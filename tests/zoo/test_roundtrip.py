"""Every zoo model from both exporters loads, validates, and round-trips through an empty
pipeline (and through cleanup) with identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_compiler import models_zoo
from spa_compiler.compile import compile_model
from spa_compiler.ir import ModelIR
from spa_compiler.validation import check_model
from tests.helpers import run_ort

CASES = [(n, e) for n in models_zoo.list_models() for e in models_zoo.EXPORTERS]


@pytest.mark.parametrize(("name", "exporter"), CASES)
@pytest.mark.parametrize("pipeline", ["", "cleanup"])
def test_round_trip_identical(tmp_path: Path, name: str, exporter: str, pipeline: str) -> None:
    src = models_zoo.build(name, exporter)
    check_model(ModelIR.load(src))
    out = tmp_path / "out.onnx"
    report = compile_model(
        src, out, pipeline=pipeline, input_shapes=models_zoo.default_shapes(name), measure_latency=False
    )
    assert report.status == "ok"
    assert report.after["params"] == report.before["params"]
    reloaded = onnx.load(out)
    assert reloaded.ir_version <= 13
    # symbolic dimensions stay symbolic
    for a, b in zip(onnx.load(src).graph.input, reloaded.graph.input):
        assert a.type == b.type
    feeds, _ = models_zoo.load_test_data(src.parent)
    for got, want in zip(run_ort(reloaded, feeds), run_ort(onnx.load(src), feeds)):
        np.testing.assert_array_equal(got, want)

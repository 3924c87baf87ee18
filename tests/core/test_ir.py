"""ModelIR: load/save round trips, external data, atomic writes, IR versions, clones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_compiler import ir as ir_mod
from spa_compiler.errors import InvalidModelError, OutputError, UsageError
from spa_compiler.ir import ModelIR, save_proto
from spa_compiler.targets import TARGETS, output_ir_version
from tests.helpers import conv_chain_model, run_ort


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_round_trip_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    p = tmp_path / "m.onnx"
    onnx.save(proto, p)
    model = ModelIR.load(p)
    out = tmp_path / "o.onnx"
    model.save(out)
    feeds = _feeds(rng)
    np.testing.assert_array_equal(run_ort(proto, feeds)[0], run_ort(onnx.load(out), feeds)[0])


def test_external_data_round_trip(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1234)
    proto = conv_chain_model(rng)
    p = tmp_path / "m.onnx"
    onnx.save_model(conv_chain_model(np.random.default_rng(1234)), p, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    model = ModelIR.load(p)
    # force the external-data path for the output, as for a >2 GB model
    monkeypatch.setattr(ir_mod, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "sub" / "o.onnx"
    out.parent.mkdir()
    model.save(out)
    assert (out.parent / "o.onnx.data").is_file()
    assert sorted(q.name for q in out.parent.iterdir()) == ["o.onnx", "o.onnx.data"]
    reloaded = onnx.load(out)
    feeds = _feeds(rng)
    np.testing.assert_array_equal(run_ort(proto, feeds)[0], run_ort(reloaded, feeds)[0])


def test_external_data_save_from_the_inputs_folder(tmp_path: Path, monkeypatch) -> None:
    """`spa-compile m.onnx -o out/m.onnx` run in m.onnx's folder: a file named like the output's
    data file sits in the working folder (the input's own m.onnx.data); onnx's own external-data
    conversion refused that ("External data file exists"), the save must not."""
    rng = np.random.default_rng(7)
    proto = conv_chain_model(rng)
    onnx.save_model(proto, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    before = (tmp_path / "m.onnx.data").read_bytes()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ir_mod, "EXTERNAL_DATA_THRESHOLD", 0)
    (tmp_path / "out").mkdir()
    ModelIR.load(Path("m.onnx")).save(Path("out") / "m.onnx")
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").read_bytes() == before  # the input's data untouched
    mode = lambda p: (tmp_path / "out" / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("m.onnx.data") == mode("m.onnx")  # readable like the model (onnx makes it 0600)
    feeds = _feeds(rng)
    np.testing.assert_array_equal(run_ort(proto, feeds)[0], run_ort(onnx.load("out/m.onnx"), feeds)[0])


def test_save_failure_leaves_nothing(tmp_path: Path, rng: np.random.Generator, monkeypatch) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    dest = tmp_path / "o.onnx"
    dest.write_bytes(b"previous contents")

    def fail(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(onnx, "save_model", fail)
    with pytest.raises(OutputError, match="no space left on device"):  # a one-line usage error
        model.save(dest)
    assert dest.read_bytes() == b"previous contents"  # the old file is intact, not half-replaced
    assert [q.name for q in tmp_path.iterdir()] == ["o.onnx"]


def test_save_into_missing_folder_is_usage_error(tmp_path: Path, rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    with pytest.raises(UsageError, match="does not exist"):
        model.save(tmp_path / "nope" / "o.onnx")


def test_ir_version_capped_per_target(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    proto.ir_version = 14
    model = ModelIR.from_proto(proto)
    assert output_ir_version(model, TARGETS["ort-cpu"]) == 13
    assert output_ir_version(model, TARGETS["tensorrt"]) == 10
    assert model.to_proto(ir_version=13).ir_version == 13
    low = ModelIR.from_proto(conv_chain_model(rng))  # IR 9 stays 9
    assert output_ir_version(low, TARGETS["ort-cpu"]) == 9


def test_clone_is_independent(rng: np.random.Generator) -> None:
    model = ModelIR.from_proto(conv_chain_model(rng))
    before = model.fingerprint()
    other = model.clone()
    w = other.tensors()["w1"]
    w.values = np.zeros_like(w.values)  # edits assign new arrays ...
    assert model.fingerprint() == before
    assert other.fingerprint() != before
    with pytest.raises(ValueError, match="read-only"):  # ... an in-place edit of a shared one fails
        other.tensors()["w2"].values[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        model.tensors()["w2"].values[...] = 0
    assert model.fingerprint() == before


def test_clone_shares_unchanged_weights(rng: np.random.Generator) -> None:
    """A clone costs the graph, not the weights: every constant array is shared (copy-on-write)."""
    model = ModelIR.from_proto(conv_chain_model(rng))
    other = model.clone()
    mine, theirs = model.tensors(), other.tensors()
    consts = [n for n, t in mine.items() if isinstance(t, ir_mod.gs.Constant)]
    assert consts
    for name in consts:
        assert mine[name] is not theirs[name]
        assert np.shares_memory(mine[name].values, theirs[name].values)


def test_from_proto_keeps_no_reference_into_the_proto(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    model = ModelIR.from_proto(proto)
    before = model.fingerprint()
    for t in proto.graph.initializer:  # the caller may reuse its proto: the model must not see it
        t.raw_data = bytes(len(t.raw_data))
    del proto.opset_import[:]
    assert model.fingerprint() == before
    for t in model.tensors().values():
        if isinstance(t, ir_mod.gs.Constant):
            assert isinstance(t._values, np.ndarray)


def test_weightless_export(rng: np.random.Generator) -> None:
    """to_proto(weights=False) leaves the float weights out (dims and dtype kept);
    to_proto_split hands out the model's own arrays; both export the same model."""
    model = ModelIR.from_proto(conv_chain_model(rng))
    full = model.to_proto()
    skeleton, arrays = model.to_proto_split()
    assert arrays and skeleton.ByteSize() < full.ByteSize()
    by_name = {t.name: t for t in full.graph.initializer}
    for t in skeleton.graph.initializer:
        if t.name in arrays:
            assert t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data
            ref = by_name[t.name]
            assert list(t.dims) == list(ref.dims) and t.data_type == ref.data_type
            assert np.shares_memory(arrays[t.name], model.tensors()[t.name].values)
            np.testing.assert_array_equal(arrays[t.name], onnx.numpy_helper.to_array(ref))
        else:
            assert t == by_name[t.name]
    assert model.to_proto(weights=False) == skeleton
    assert model.to_proto().SerializeToString() == full.SerializeToString()  # nothing left swapped


def test_load_missing_file() -> None:
    with pytest.raises(InvalidModelError, match="no such file"):
        ModelIR.load("/nonexistent/model.onnx")


def test_set_input_shapes_checks(rng: np.random.Generator) -> None:
    proto = conv_chain_model(rng)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model = ModelIR.from_proto(proto)
    assert model.symbolic_inputs() == {"x": ("n", 3, 8, 8)}
    with pytest.raises(UsageError, match="rank"):
        model.set_input_shapes({"x": (1, 3, 8)})
    with pytest.raises(UsageError, match="fixed to 3"):
        model.set_input_shapes({"x": (1, 4, 8, 8)})
    with pytest.raises(UsageError, match="not a model input"):
        model.set_input_shapes({"y": (1,)})
    model.set_input_shapes({"x": (2, 3, 8, 8)})
    assert model.symbolic_inputs() == {}
    assert model.tensors()["r2"].shape == [2, 16, 8, 8]  # inferred through the graph


def test_save_proto_refuses_directory(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(UsageError, match="directory"):
        save_proto(conv_chain_model(rng), tmp_path)


def test_clone_separates_constant_node_values() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers import make_model

    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32)))
    m = make_model(
        [c, helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = ModelIR.from_proto(m)
    other = model.clone()
    assert other.graph.nodes[0].attrs["value"] is not model.graph.nodes[0].attrs["value"]
    other.graph.nodes[0].attrs["value"].values = np.full(4, 5, np.float32)
    assert float(model.graph.nodes[0].attrs["value"].values[0]) == 1.0
    with pytest.raises(ValueError, match="read-only"):  # shared until replaced, never edited
        model.graph.nodes[0].attrs["value"].values[...] = 5

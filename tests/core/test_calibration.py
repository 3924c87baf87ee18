"""Calibration sources (--calib layouts, lazy streaming, validation) and ActivationCollector."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper

import spa_compiler.calibration as calibration
from spa_compiler.calibration import (
    ActivationCollector,
    CalibrationSource,
    FunctionSource,
    NumpyDirectorySource,
    TestDataSetSource,
    load_calibration,
    model_inputs,
)
from spa_compiler.criteria.hessian import HessianAccumulator
from spa_compiler.errors import PreconditionError, SpaError, UsageError
from spa_compiler.ir import ModelIR

NAMES = ["x", "idx"]


def _feed(k: int, n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "idx": rng.integers(0, 10, size=n).astype(np.int64),
    }


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------------------ layouts


def test_npz_directory_natural_order_and_reiterable(tmp_path: Path) -> None:
    for k in (2, 10, 1):
        np.savez(tmp_path / f"feed_{k}.npz", **_feed(k), extra=np.zeros(1))  # extra keys dropped
    src = load_calibration(str(tmp_path), NAMES)
    assert isinstance(src, NumpyDirectorySource) and isinstance(src, CalibrationSource)
    assert len(src) == 3
    for _ in range(2):  # every iter() restarts
        feeds = list(src)
        assert len(feeds) == 3
        for got, k in zip(feeds, (1, 2, 10), strict=True):
            _same(got, _feed(k))


def test_flat_npy_layout_with_sanitized_names(tmp_path: Path) -> None:
    names = ["input:0", "idx"]
    for k in range(3):
        f = _feed(k)
        np.save(tmp_path / f"input_0_{k}.npy", f["x"])  # "input:0" -> "input_0"
        np.save(tmp_path / f"idx_{k}.npy", f["idx"])
    feeds = list(load_calibration(tmp_path, names))
    assert len(feeds) == 3
    for k, got in enumerate(feeds):
        np.testing.assert_array_equal(got["input:0"], _feed(k)["x"])
        np.testing.assert_array_equal(got["idx"], _feed(k)["idx"])


def test_per_input_folders_layout(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).mkdir()
    for k in (0, 2, 10):
        for name, arr in _feed(k).items():
            np.save(tmp_path / name / f"{k}.npy", arr)
    feeds = list(load_calibration(tmp_path, NAMES))
    for got, k in zip(feeds, (0, 2, 10), strict=True):
        _same(got, _feed(k))


def test_npz_and_npy_mixed_npz_first_and_single_npz_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", **_feed(7))
    for name, arr in _feed(8).items():
        np.save(tmp_path / f"{name}_0.npy", arr)
    feeds = list(load_calibration(tmp_path, NAMES))
    assert len(feeds) == 2
    _same(feeds[0], _feed(7))
    _same(feeds[1], _feed(8))
    single = load_calibration(tmp_path / "a.npz", NAMES)
    assert len(single) == 1  # type: ignore[arg-type]
    _same(next(iter(single)), _feed(7))


def _write_set(folder: Path, feed: dict[str, np.ndarray], *, named: bool = True) -> None:
    folder.mkdir(parents=True)
    for i, (name, arr) in enumerate(feed.items()):
        t = numpy_helper.from_array(arr, name if named else "")
        (folder / f"input_{i}.pb").write_bytes(t.SerializeToString())
    (folder / "output_0.pb").write_bytes(b"ignored")


def test_test_data_set_layout(tmp_path: Path) -> None:
    for k in (0, 1, 11, 2):
        _write_set(tmp_path / f"test_data_set_{k}", _feed(k), named=k != 1)  # set 1: by position
    src = load_calibration(tmp_path, NAMES)
    assert isinstance(src, TestDataSetSource)
    assert len(src) == 4
    for got, k in zip(src, (0, 1, 2, 11), strict=True):
        _same(got, _feed(k))
    # a single test_data_set folder is one feed
    one = load_calibration(tmp_path / "test_data_set_2", NAMES)
    _same(next(iter(one)), _feed(2))
    # names win over positions: store the inputs in the reverse order
    rev = tmp_path / "rev" / "test_data_set_0"
    rev.mkdir(parents=True)
    f = _feed(5)
    for i, name in enumerate(reversed(NAMES)):
        (rev / f"input_{i}.pb").write_bytes(
            numpy_helper.from_array(f[name], name).SerializeToString()
        )
    _same(next(iter(load_calibration(tmp_path / "rev", NAMES))), f)


def test_function_spec_module_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = textwrap.dedent(
        """
        import numpy as np
        CALLS = []

        def feeds():
            CALLS.append(1)
            for k in range(3):
                rng = np.random.default_rng(k)
                yield {"x": rng.standard_normal((3, 4)).astype(np.float32),
                       "idx": rng.integers(0, 10, size=3).astype(np.int64)}

        NOT_CALLABLE = 3

        def returns_int():
            return 5

        def broken():
            yield {"x": np.zeros((3, 4), np.float32), "idx": np.zeros(3, np.int64)}
            raise RuntimeError("disk on fire")
        """
    )
    (tmp_path / "spa_calib_mod.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = load_calibration("spa_calib_mod:feeds", NAMES)
    assert isinstance(src, FunctionSource)
    mod = sys.modules["spa_calib_mod"]
    assert mod.CALLS == []  # not called before iterating
    for _ in range(2):
        feeds = list(src)
        for k, got in enumerate(feeds):
            _same(got, _feed(k))
    assert mod.CALLS == [1, 1]  # called once per iteration
    by_path = load_calibration(f"{tmp_path / 'spa_calib_mod.py'}:feeds", NAMES, limit=2)
    assert len(list(by_path)) == 2

    with pytest.raises(UsageError, match="returned a int"):
        list(load_calibration("spa_calib_mod:returns_int", NAMES))
    with pytest.raises(UsageError, match="disk on fire"):
        list(load_calibration("spa_calib_mod:broken", NAMES))
    with pytest.raises(UsageError, match="not callable"):
        load_calibration("spa_calib_mod:NOT_CALLABLE", NAMES)
    with pytest.raises(UsageError, match="no attribute 'nope'"):
        load_calibration("spa_calib_mod:nope", NAMES)


def test_function_import_failures(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot import calibration module 'no_such_mod_xyz'"):
        load_calibration("no_such_mod_xyz:feeds", NAMES)
    bad = tmp_path / "bad.py"
    bad.write_text("def feeds(:\n")
    with pytest.raises(UsageError, match="SyntaxError"):
        load_calibration(f"{bad}:feeds", NAMES)
    boom = tmp_path / "boom.py"
    boom.write_text("raise ImportError('needs torchvision')\n")
    with pytest.raises(UsageError, match="needs torchvision"):
        load_calibration(f"{boom}:feeds", NAMES)
    with pytest.raises(UsageError, match="not found"):
        load_calibration(f"{tmp_path / 'missing.py'}:feeds", NAMES)


# ----------------------------------------------------------------------------- streaming


def test_files_are_read_lazily_one_feed_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in range(4):
        for name, arr in _feed(k).items():
            np.save(tmp_path / f"{name}_{k}.npy", arr)
    reads: list[str] = []
    real_load = np.load

    def counting_load(path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(calibration.np, "load", counting_load)
    src = load_calibration(tmp_path, NAMES, check_first=False)
    assert reads == []  # indexing lists files, reads nothing
    it = iter(src)
    next(it)
    assert sorted(reads) == ["idx_0.npy", "x_0.npy"]
    next(it)
    assert len(reads) == 4
    reads.clear()
    load_calibration(tmp_path, NAMES)  # check_first reads exactly the first feed
    assert sorted(reads) == ["idx_0.npy", "x_0.npy"]


# ----------------------------------------------------------------------------- validation


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_calibration(str(tmp_path / "nope"), NAMES)
    with pytest.raises(UsageError, match="is empty"):
        load_calibration(tmp_path, NAMES)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(UsageError, match="holds no calibration files"):
        load_calibration(tmp_path, NAMES)
    with pytest.raises(UsageError, match="not a .npz"):
        load_calibration(tmp_path / "readme.txt", NAMES)


def test_feed_missing_an_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "f0.npz", x=_feed(0)["x"])
    with pytest.raises(UsageError, match=r"f0\.npz lacks input\(s\) \['idx'\]") as info:
        load_calibration(tmp_path, NAMES)
    assert "\n" not in info.value.one_line()
    assert "the model's inputs are ['x', 'idx']" in info.value.one_line()


def test_wrong_dtype_names_the_expected_one(tmp_path: Path) -> None:
    f = _feed(0)
    np.savez(tmp_path / "f0.npz", x=f["x"].astype(np.float64), idx=f["idx"])
    dtypes = {"x": np.float32, "idx": np.int64}
    with pytest.raises(UsageError, match="'x' has dtype float64, expected float32") as info:
        load_calibration(tmp_path, NAMES, expected_dtypes=dtypes)
    assert "astype(np.float32)" in info.value.one_line()
    # without expected dtypes the feed is accepted as is
    assert next(iter(load_calibration(tmp_path, NAMES)))["x"].dtype == np.float64


def test_wrong_shape_against_fixed_dims(tmp_path: Path) -> None:
    np.savez(tmp_path / "f0.npz", **_feed(0))
    ok = load_calibration(tmp_path, NAMES, expected_shapes={"x": [None, 4], "idx": [-1]})
    assert len(list(ok)) == 1
    with pytest.raises(UsageError, match=r"shape \[3, 4\], expected \['\?', 5\]"):
        load_calibration(tmp_path, NAMES, expected_shapes={"x": [None, 5]})
    with pytest.raises(UsageError, match="expected"):
        load_calibration(tmp_path, NAMES, expected_shapes={"idx": [3, 1]})


def test_npy_layout_errors(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    for k in range(2):
        np.save(a / f"x_{k}.npy", _feed(k)["x"])
    np.save(a / "idx_0.npy", _feed(0)["idx"])
    with pytest.raises(UsageError, match=r"no file for input 'idx' of feed 1 \(idx_1\.npy\)"):
        load_calibration(a, NAMES)
    b = tmp_path / "b"
    (b / "x").mkdir(parents=True)
    (b / "idx").mkdir()
    np.save(b / "x" / "0.npy", _feed(0)["x"])
    with pytest.raises(UsageError, match="different numbers"):
        load_calibration(b, NAMES)
    c = tmp_path / "c"
    (c / "x").mkdir(parents=True)
    np.save(c / "x" / "0.npy", _feed(0)["x"])
    with pytest.raises(UsageError, match=r"none for \['idx'\]"):
        load_calibration(c, NAMES)
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "sample.npy", _feed(0)["x"])
    with pytest.raises(UsageError, match="not named <input>_<k>.npy"):
        load_calibration(d, NAMES)


def test_mixed_layouts_and_bad_files(tmp_path: Path) -> None:
    _write_set(tmp_path / "test_data_set_0", _feed(0))
    np.savez(tmp_path / "f.npz", **_feed(0))
    with pytest.raises(UsageError, match="mixes"):
        load_calibration(tmp_path, NAMES)
    e = tmp_path / "e"
    (e / "test_data_set_0").mkdir(parents=True)
    with pytest.raises(UsageError, match="no input_<i>.pb"):
        load_calibration(e, NAMES)
    g = tmp_path / "g" / "test_data_set_0"
    g.mkdir(parents=True)
    (g / "input_0.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(UsageError, match="cannot read"):
        load_calibration(tmp_path / "g", NAMES)
    h = tmp_path / "h"
    h.mkdir()
    (h / "f.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="cannot read calibration file"):
        load_calibration(h, NAMES)
    with pytest.raises(UsageError, match="neither a folder nor module:function"):
        load_calibration(":feeds", NAMES)


def test_limit_and_non_mapping_feed(tmp_path: Path) -> None:
    for k in range(5):
        np.savez(tmp_path / f"f{k}.npz", **_feed(k))
    src = load_calibration(tmp_path, NAMES, limit=2)
    assert len(src) == 2 and len(list(src)) == 2  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="positive"):
        load_calibration(tmp_path, NAMES, limit=0)
    fs = FunctionSource.__new__(FunctionSource)  # a function yielding a list, not a dict
    calibration._Validated.__init__(fs, NAMES)
    fs.spec, fs.function = "m:f", lambda: iter([[1, 2]])
    with pytest.raises(UsageError, match="is a list, expected a dict"):
        list(fs)


def test_errors_are_spa_usage_errors() -> None:
    assert issubclass(UsageError, SpaError)
    assert UsageError.exit_code == 2


# ------------------------------------------------------------------------ ActivationCollector


def _model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (N, 4) float, idx (N,) int64 -> y; intermediates h, g, a, r."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    emb = rng.standard_normal((10, 3)).astype(np.float32)
    w2 = rng.standard_normal((3, 2)).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["h"]),
        oh.make_node("Gather", ["E", "idx"], ["g"]),
        oh.make_node("Add", ["h", "g"], ["a"]),
        oh.make_node("Relu", ["a"], ["r"]),
        oh.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "tiny",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            oh.make_tensor_value_info("idx", TensorProto.INT64, ["N"]),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(emb, "E"),
            numpy_helper.from_array(w2, "W2"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, {"W": w, "E": emb, "W2": w2}


def _reference(p: dict[str, np.ndarray], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h = feed["x"] @ p["W"]
    g = p["E"][feed["idx"]]
    a = h + g
    r = np.maximum(a, 0)
    return {"h": h, "g": g, "a": a, "r": r, "y": r @ p["W2"], "x": feed["x"], "W": p["W"]}


def test_model_inputs() -> None:
    model, _ = _model()
    model.graph.input.append(oh.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))  # old style
    specs = model_inputs(model)
    assert [s.name for s in specs] == ["x", "idx"]
    assert specs[0].dtype == np.float32 and specs[1].dtype == np.int64
    assert specs[0].shape == (None, 4)


@pytest.mark.parametrize("names", [["a", "r"], ["g", "y", "x", "W", "h"]])
def test_collector_matches_numpy(names: list[str]) -> None:
    model, params = _model()
    before = model.SerializeToString()
    col = ActivationCollector(model, names)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert col.input_names == ["x", "idx"]
    feeds = [_feed(k, n=k + 2) for k in range(3)]
    outs = list(col.collect(iter(feeds)))
    assert len(outs) == 3
    for feed, got in zip(feeds, outs, strict=True):
        ref = _reference(params, feed)
        assert list(got) == names
        for n in names:
            assert got[n].dtype == ref[n].dtype
            np.testing.assert_allclose(got[n], ref[n], rtol=1e-5, atol=1e-6)


def test_collector_from_calibration_folder_into_hessian(tmp_path: Path) -> None:
    model, params = _model()
    for k in range(4):
        np.savez(tmp_path / f"f{k}.npz", **_feed(k, n=5))
    specs = model_inputs(model)
    src = load_calibration(
        tmp_path, [s.name for s in specs], expected_dtypes={s.name: s.dtype for s in specs}
    )
    with ActivationCollector(ModelIR.from_proto(model), ["r"]) as col:
        acc = HessianAccumulator(3)
        for acts in col.collect(src):
            acc.add_batch(acts["r"])
    r = np.concatenate([_reference(params, _feed(k, n=5))["r"] for k in range(4)]).astype(
        np.float64
    )
    np.testing.assert_allclose(acc.hessian(damp=0.0), 2 * r.T @ r / r.shape[0], rtol=1e-5)


def test_collector_errors() -> None:
    model, _ = _model()
    with pytest.raises(PreconditionError, match=r"cannot collect \['nope'\]"):
        ActivationCollector(model, ["a", "nope"])
    with pytest.raises(ValueError):
        ActivationCollector(model, [])
    col = ActivationCollector(model, ["a"])
    with pytest.raises(UsageError, match=r"lacks input\(s\) \['idx'\]"):
        col.run({"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(UsageError, match="ONNX Runtime rejected"):
        col.run({"x": np.zeros((2, 4), np.float64), "idx": np.zeros(2, np.int64)})
    col.close()


def test_collector_without_shape_inference_and_large_model_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, params = _model()
    feed = _feed(3)
    ref = _reference(params, feed)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("inference broke")

    with monkeypatch.context() as m:  # outputs declared without a type still work
        m.setattr(onnx.shape_inference, "infer_shapes", fail)
        got = ActivationCollector(model, ["a", "W"]).run(feed)
        np.testing.assert_allclose(got["a"], ref["a"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["W"], ref["W"])
    with monkeypatch.context() as m:  # > 2 GB route: external data in a temporary folder
        m.setattr(calibration, "_MAX_INLINE_BYTES", 0)
        m.setattr(calibration, "_EXTERNAL_MIN_BYTES", 0)
        before = model.SerializeToString()
        col = ActivationCollector(model, ["r"])
        assert model.SerializeToString() == before
        assert col._tmp is not None
        tmp = Path(col._tmp.name)
        weights = sum(p.nbytes for p in params.values())
        assert (tmp / "model.onnx.data").stat().st_size == weights
        np.testing.assert_allclose(col.run(feed)["r"], ref["r"], rtol=1e-5, atol=1e-6)
        col.close()
        assert not tmp.exists()

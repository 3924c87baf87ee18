"""The quality harness (benchmarks/quality, issue 5) on the real dense models, and on deliberately
damaged copies of them, which must score worse: the harness can fail.

Slow and real: run with --run-slow after scripts/install_real.sh. Each test skips when the packages
or the data it needs are missing. The exports are the cached ones of models_zoo.real (exported on
first use, minutes). Quick sizes only; the full reference figures are in
benchmarks/quality/dense_reference.json.

Measured on the 2-core machine (quick sizes, dense -> damaged): SmolLM2 2 windows ppl 19.34 (both
exporters) -> 1.2e5 with layer 0's MLP down projection zeroed; MiniLM probe 1000/500 0.696 -> 0.650,
cosine 1.0 -> 0.85 with two FFN output projections zeroed; EfficientNet probe 200/200 0.80 -> 0.77,
top-1 agreement 1.0 -> 0.37 with one conv zeroed. The whole file takes 2-4 minutes (exports cached).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Callable

import numpy as np
import pytest

from benchmarks.quality import evaluate as ev

real = pytest.importorskip("spa_compiler.models_zoo.real")
data = pytest.importorskip("spa_compiler.models_zoo.data")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

slow_real = [pytest.mark.slow, pytest.mark.real]


def _need(name: str) -> None:
    if not real.available(name):
        pytest.skip(
            f"{name}: missing {', '.join(real.missing_packages(name))} (scripts/install_real.sh)"
        )
    pytest.importorskip("sklearn")


def _need_data(loader: Callable[[], object]) -> None:
    try:
        loader()
    except data.DataUnavailableError as e:
        pytest.skip(f"data unavailable: {e}")


def _dense(name: str, exporter: str = "torchscript") -> pathlib.Path:
    _need(name)
    return real.export_real(name, exporter)


def _damaged(
    src: pathlib.Path, dst_dir: pathlib.Path, pick: Callable[[onnx.ModelProto], str]
) -> pathlib.Path:
    """A copy of `src` whose initializer `pick(model)` is all zeros (stored inline). External data
    files are hard-linked (copied across file systems; ONNX Runtime refuses symlinks that leave the
    model's folder), so even SmolLM2 costs only its graph file."""
    m = onnx.load(str(src), load_external_data=False)
    name = pick(m)
    init = next(t for t in m.graph.initializer if t.name == name)
    zeros = onnx.numpy_helper.from_array(
        np.zeros(tuple(init.dims), dtype=onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), name
    )
    init.CopyFrom(zeros)  # clears data_location / external_data too
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in ev._external_files(src):
        try:
            os.link(f.resolve(), dst_dir / f.name)
        except OSError:
            shutil.copyfile(f, dst_dir / f.name)
    out = dst_dir / "model.onnx"
    onnx.save(m, str(out))
    return out


def _weights(m: onnx.ModelProto, op: str) -> list[tuple[str, tuple[int, ...]]]:
    """(initializer name, dims) of the >= 2-D weights of `op` nodes, in node order."""
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    return [
        (i, inits[i])
        for n in m.graph.node
        if n.op_type == op
        for i in n.input
        if i in inits and len(inits[i]) >= 2
    ]


def _first_with_shape(op: str, shape: tuple[int, ...]) -> Callable[[onnx.ModelProto], str]:
    return lambda m: next(n for n, d in _weights(m, op) if d == shape)


# ----------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smollm2_dense_ppl() -> dict[str, float]:
    return {}


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_smollm2_quick_perplexity_plausible(exporter: str, smollm2_dense_ppl: dict) -> None:
    path = _dense("smollm2-135m", exporter)
    _need_data(data.jane_austen_books)
    res = ev.smollm2_perplexity(path, windows=2)
    assert res["tokens_scored"] == 2 * 511
    assert res["inputs"] == list(real.input_names("smollm2-135m", exporter))
    assert 10.0 < res["perplexity"] < 60.0, res
    assert len(res["window_perplexity"]) == 2
    smollm2_dense_ppl[exporter] = res["perplexity"]
    if len(smollm2_dense_ppl) == 2:  # both exporters compute the same function
        a, b = smollm2_dense_ppl.values()
        assert abs(a - b) / a < 1e-3


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_damaged_model_scores_worse(tmp_path: pathlib.Path) -> None:
    path = _dense("smollm2-135m", "dynamo")
    _need_data(data.jane_austen_books)
    dense = ev.smollm2_perplexity(path, dense_path=path, windows=2)
    assert dense["perplexity_ratio_to_dense"] == 1.0
    # layer 0's MLP down projection (MatMul weight [1536, 576]) zeroed
    bad = _damaged(path, tmp_path / "bad", _first_with_shape("MatMul", (1536, 576)))
    res = ev.smollm2_perplexity(bad, dense_path=path, windows=2)
    assert res["perplexity"] > 1.2 * dense["perplexity"], (dense, res)
    assert res["dense_perplexity"] == pytest.approx(dense["perplexity"], rel=1e-12)
    assert res["perplexity_ratio_to_dense"] > 1.2
    # fidelity: the dense model against itself is exact; the damaged one departs from it
    assert dense["kl_to_dense"] == 0.0 and dense["top1_agreement"] == 1.0
    assert res["kl_to_dense"] > 0.05 and res["top1_agreement"] < 0.95, res


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_calibration_disjoint_and_readable(tmp_path: pathlib.Path) -> None:
    _need("smollm2-135m")
    _need_data(data.jane_austen_books)
    from spa_compiler.calibration import load_calibration

    feeds = list(ev.smollm2_calibration(n=7, seq=64))
    assert len(feeds) == 7
    for f in feeds:
        assert set(f) == {"input_ids", "attention_mask", "position_ids"}
        assert all(v.shape == (1, 64) and v.dtype == np.int64 for v in f.values())
    # round-robin over the five other novels: the first five windows are the openings of each
    for f, book in zip(feeds, ev.CALIB_BOOKS, strict=False):
        assert np.array_equal(f["input_ids"][0], ev.book_windows(book, 1, 64)[0])
    assert ev.EVAL_BOOK not in ev.CALIB_BOOKS
    with pytest.raises(ValueError):
        next(ev.smollm2_calibration(n=1, books=(ev.EVAL_BOOK,)))
    assert ev.write_calibration_dir(tmp_path / "calib", feeds) == 7
    src = load_calibration(tmp_path / "calib", ["input_ids"])
    got = [f["input_ids"] for f in src]
    assert len(got) == 7 and np.array_equal(got[3], feeds[3]["input_ids"])


# ----------------------------------------------------------------------------- MiniLM
@pytest.mark.slow
@pytest.mark.real
def test_minilm_quick_probe_and_self_cosine(tmp_path: pathlib.Path) -> None:
    path = _dense("minilm-l6")
    _need_data(data.movie_snippets)
    res = ev.minilm_probe(path, dense_path=path, n_train=1000, n_test=500, cache_dense=False)
    assert res["probe_accuracy"] > 0.6, res
    assert res["cosine_to_dense"] > 0.99999 and res["cosine_to_dense_min"] > 0.9999
    assert res["embedding_dim"] == 384


@pytest.mark.slow
@pytest.mark.real
def test_minilm_damaged_model_scores_worse(tmp_path: pathlib.Path) -> None:
    path = _dense("minilm-l6")
    _need_data(data.movie_snippets)
    dense = ev.minilm_probe(path, n_train=1000, n_test=500)
    # the FFN output projections ([1536, 384]) of the first two layers zeroed
    m = onnx.load(str(path), load_external_data=False)
    ffn_out = [n for n, d in _weights(m, "MatMul") if d == (1536, 384)]
    bad = _damaged(path, tmp_path / "b1", lambda _m: ffn_out[0])
    bad = _damaged(bad, tmp_path / "b2", lambda _m: ffn_out[1])
    res = ev.minilm_probe(bad, dense_path=path, n_train=1000, n_test=500)
    assert res["cosine_to_dense"] < 0.95, res
    assert res["probe_accuracy"] < dense["probe_accuracy"], (dense["probe_accuracy"], res)


@pytest.mark.slow
@pytest.mark.real
def test_minilm_calibration_from_train_split_only() -> None:
    _need("minilm-l6")
    _need_data(data.movie_snippets)
    texts = [t for t, _ in data.movie_snippets()]
    tr, te = ev.movie_split(8000, 2568)
    assert not set(tr) & set(te)
    feeds = list(ev.minilm_calibration(n=20))
    tok = real.load_tokenizer("minilm-l6")
    for f, i in zip(feeds, tr[:20], strict=True):
        assert set(f) == {"input_ids", "attention_mask", "token_type_ids"}
        want = tok(texts[i], truncation=True, max_length=ev.MINILM_MAX_LENGTH)["input_ids"]
        assert f["input_ids"][0].tolist() == want


# ----------------------------------------------------------------------------- EfficientNet
def _need_fashion() -> None:
    if not data.fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.slow
@pytest.mark.real
def test_efficientnet_quick_self_agreement_and_probe() -> None:
    path = _dense("efficientnet-lite0")
    _need_fashion()
    assert ev.penultimate_tensor(path) is not None
    res = ev.efficientnet_quality(path, dense_path=path, n=200, cache_dense=False)
    assert res["features"].startswith("penultimate:") and res["feature_dim"] == 1280
    assert res["top1_agreement"] == 1.0
    assert res["top5_contains_dense_top1"] == 1.0
    assert res["logit_cosine_to_dense"] > 0.99999
    assert res["probe_accuracy"] > 0.6, res


@pytest.mark.slow
@pytest.mark.real
def test_efficientnet_damaged_model_scores_worse(tmp_path: pathlib.Path) -> None:
    path = _dense("efficientnet-lite0")
    _need_fashion()
    dense = ev.efficientnet_quality(path, n=200)
    # the 21st conv's weight zeroed; the copy is saved with external data, so the penultimate
    # features are read from a model whose weights live in model.onnx.data
    bad = _damaged(path, tmp_path / "bad", lambda m: _weights(m, "Conv")[20][0])
    m = onnx.load(str(bad))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(m, str(ext / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=1024)  # fmt: skip
    bad = ext / "model.onnx"
    assert ev._external_files(bad)
    res = ev.efficientnet_quality(bad, dense_path=path, n=200)
    assert res["top1_agreement"] < 0.9, res
    assert res["probe_accuracy"] < dense["probe_accuracy"], (dense["probe_accuracy"], res)


@pytest.mark.slow
@pytest.mark.real
def test_efficientnet_calibration_disjoint() -> None:
    _need_fashion()
    tr, te = ev.fashion_split(ev.FASHION_PROBE_POOL, 100)
    feeds = list(ev.efficientnet_calibration(n=4, batch=2))
    assert len(feeds) == 2 and feeds[0]["input"].shape == (2, 3, 224, 224)
    assert feeds[0]["input"].dtype == np.float32
    assert -1.0 <= feeds[0]["input"].min() and feeds[0]["input"].max() <= 1.0
    calib_idx = ev._fashion_perm()[ev.FASHION_PROBE_POOL : ev.FASHION_PROBE_POOL + 4]
    assert not set(calib_idx) & set(tr)
    x, _ = data.fashion_mnist("train")
    assert np.allclose(feeds[1]["input"][1], ev.fashion_images(x[calib_idx[3:4]])[0])


@pytest.mark.slow
@pytest.mark.real
def test_run_command_writes_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    _dense("efficientnet-lite0")
    _need_fashion()
    from benchmarks.quality import run

    out = tmp_path / "r.json"
    argv = ["--model", "efficientnet", "--export-dense", "--quick", "--n", "50", "--n-train", "50",
            "--out", str(out)]  # fmt: skip
    assert run.main(argv) == 0
    rec = json.loads(out.read_text())
    assert "benchmarks.quality.run" in rec["command"] and rec["date"]
    assert rec["versions"]["onnxruntime"] and rec["sizes"] == {"n": 50, "n_train": 50}
    assert rec["results"]["top1_agreement"] == 1.0
    assert "probe_accuracy" in capsys.readouterr().out


# ----------------------------------------------------------------------------- fast, no packages
def test_penultimate_falls_back_to_logits_when_no_classifier(tmp_path: pathlib.Path) -> None:
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    with_head = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["y"])], "g", [x], [y], [w, b],
    )  # fmt: skip
    p = tmp_path / "head.onnx"
    onnx.save(helper.make_model(with_head), str(p))
    assert ev.penultimate_tensor(p) == "h"
    y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    no_head = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y4])
    p2 = tmp_path / "nohead.onnx"
    onnx.save(helper.make_model(no_head), str(p2))
    assert ev.penultimate_tensor(p2) is None


def test_resize_matches_bilinear_half_pixel() -> None:
    img = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    out = ev.fashion_images(img, size=56)
    assert out.shape == (1, 3, 56, 56) and np.array_equal(out[:, 0], out[:, 2])
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0)[:, None], size=(56, 56),
        mode="bilinear", align_corners=False,
    )[0, 0].numpy()  # fmt: skip
    assert np.allclose(out[0, 0], ref, atol=1e-5)

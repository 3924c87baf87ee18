"""models_zoo: every model × exporter builds, is a valid self-contained ONNX file, matches torch.

The parametrized tests use the real cache (`$SPA_COMPILER_CACHE` or ~/.cache/spa-compiler) so that
later test modules reuse the 16 exports; the tests of the cache machinery itself (force, stale,
concurrent builders) point `SPA_COMPILER_CACHE` at a temporary folder.
"""

from __future__ import annotations

import collections
import pathlib
import threading
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from spa_compiler import models_zoo
from spa_compiler.models_zoo import _cache, _export

NAMES = (
    "tiny_resnet",
    "tiny_mobilenet",
    "tiny_densenet",
    "tiny_shufflenet",
    "tiny_vit",
    "tiny_bert",
    "tiny_gpt",
    "tiny_llama",
)
CASES = [(name, exporter) for name in NAMES for exporter in models_zoo.EXPORTERS]
RTOL, ATOL = 1e-4, 1e-5  # fp32 torch (eager) vs ORT with optimisations off
MAX_IR_VERSION = 13  # the newest IR onnxruntime 1.31+ loads
TRANSFORMERS = ("tiny_vit", "tiny_bert", "tiny_gpt", "tiny_llama")


def _session(path: pathlib.Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_outputs(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    model = models_zoo.get_model(name)
    module = model.make_module(0)
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[k]) for k in model.input_names))
    return [t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out)]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = collections.defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            users[name].append((node, i))
    return users


# --- registry, shapes, inputs (no export) -----------------------------------------------------


def test_registry_lists_the_eight_models() -> None:
    assert models_zoo.list_models() == list(NAMES)
    assert models_zoo.EXPORTERS == ("torchscript", "dynamo")
    for name in NAMES:
        model = models_zoo.MODELS[name]
        assert model.name == name
        assert model.coupling and "\n" not in model.coupling
        assert set(models_zoo.DEFAULT_SHAPES[name]) == set(model.input_names)


def test_default_shapes_and_dim_values() -> None:
    assert models_zoo.DEFAULT_SHAPES["tiny_gpt"] == {"input_ids": (2, 16)}
    assert models_zoo.default_shapes("tiny_resnet") == {"pixel_values": (2, 3, 32, 32)}
    bert = models_zoo.get_model("tiny_bert")
    assert bert.dim_values() == {"batch": 2, "sequence": 16}
    assert bert.shapes_for({"sequence": 5}) == {"input_ids": (2, 5), "attention_mask": (2, 5)}
    assert models_zoo.get_model("tiny_vit").dim_values() == {"batch": 2}
    assert models_zoo.get_model("tiny_resnet").dim_values() == {}
    with pytest.raises(ValueError, match="fixed shapes"):
        models_zoo.get_model("tiny_resnet").shapes_for({"batch": 1})


@pytest.mark.parametrize("name", NAMES)
def test_sample_inputs_are_sensible_and_reproducible(name: str) -> None:
    feeds = models_zoo.sample_inputs(name)
    again = models_zoo.sample_inputs(name, seed=0)
    other = models_zoo.sample_inputs(name, seed=1)
    model = models_zoo.get_model(name)
    assert list(feeds) == list(model.input_names)
    for key, array in feeds.items():
        assert array.shape == model.input_shapes[key]
        np.testing.assert_array_equal(array, again[key])
        assert not np.array_equal(array, other[key]) or key == "attention_mask"
    if "input_ids" in feeds:
        ids = feeds["input_ids"]
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 256
    if "attention_mask" in feeds:
        mask = feeds["attention_mask"]
        assert mask.dtype == np.int64
        assert (mask[:, 0] == 1).all() and (mask[:, -1] == 0).all()  # ones, then padding zeros
        assert (np.diff(mask, axis=1) <= 0).all()
    if "pixel_values" in feeds:
        px = feeds["pixel_values"]
        assert px.dtype == np.float32 and abs(float(px.mean())) < 0.1 and 0.9 < px.std() < 1.1


def test_sample_inputs_accept_other_shapes() -> None:
    shapes = models_zoo.get_model("tiny_llama").shapes_for({"batch": 3, "sequence": 7})
    assert models_zoo.sample_inputs("tiny_llama", shapes=shapes)["input_ids"].shape == (3, 7)


def test_make_module_is_seeded_and_leaves_global_rng_alone() -> None:
    import torch

    model = models_zoo.get_model("tiny_gpt")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = model.make_module(0), model.make_module(0), model.make_module(1)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected_next.numpy())
    assert not a.training
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), key
    assert not torch.equal(a.state_dict()["wte.weight"], c.state_dict()["wte.weight"])


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("tiny_resnet", "stem.1.running_var"),
        ("tiny_resnet", "stem.1.weight"),
        ("tiny_vit", "norm.weight"),
        ("tiny_llama", "norm.weight"),
    ],
)
def test_norm_layers_are_not_identity(name: str, key: str) -> None:
    state = models_zoo.get_model(name).make_module(0).state_dict()
    assert not np.allclose(state[key].numpy(), 1.0)


def test_unknown_name_or_exporter_raises_value_error() -> None:
    with pytest.raises(ValueError, match="tiny_resnet.*tiny_llama"):
        models_zoo.build("resnet50")
    with pytest.raises(ValueError, match="torchscript, dynamo"):
        models_zoo.build("tiny_resnet", "tensorflow")
    with pytest.raises(ValueError, match="valid names"):
        models_zoo.sample_inputs("nope")


# --- every model × exporter ------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> Callable[[str, str], pathlib.Path]:
    """Build (or reuse) an entry once per module run."""
    paths: dict[tuple[str, str], pathlib.Path] = {}

    def get(name: str, exporter: str) -> pathlib.Path:
        if (name, exporter) not in paths:
            paths[name, exporter] = models_zoo.build(name, exporter)
        return paths[name, exporter]

    return get


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_export_is_valid_and_self_contained(
    built: Callable[[str, str], pathlib.Path], name: str, exporter: str
) -> None:
    path = built(name, exporter)
    assert path == models_zoo.model_dir(name, exporter) / "model.onnx"
    assert path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    assert model.ir_version <= MAX_IR_VERSION
    if exporter == "dynamo":
        assert model.ir_version == 10
    (default_opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert 11 <= default_opset <= onnx.defs.onnx_opset_version()
    assert default_opset == _export.OPSETS[exporter]
    external = [
        t.name
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
    ]
    assert external == []
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "model.onnx",
        "test_data_set_0",
        "zoo.json",
    ]
    assert path.stat().st_size < 1_000_000  # "well under 1 MB of weights"


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_onnxruntime_matches_golden_torch_outputs(
    built: Callable[[str, str], pathlib.Path], name: str, exporter: str
) -> None:
    path = built(name, exporter)
    feeds, expected = models_zoo.load_test_data(path.parent)
    model = models_zoo.get_model(name)
    assert list(feeds) == list(model.input_names)
    for key, array in models_zoo.sample_inputs(name, seed=0).items():  # golden = seed 0
        np.testing.assert_array_equal(feeds[key], array)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(model.input_names)
    assert [o.name for o in session.get_outputs()] == list(model.output_names)
    got = session.run(None, feeds)
    assert len(got) == len(expected) == len(model.output_names)
    for actual, golden in zip(got, expected, strict=True):
        assert actual.shape == golden.shape
        np.testing.assert_allclose(actual, golden, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_symbolic_dims_are_named_and_work_at_other_sizes(
    built: Callable[[str, str], pathlib.Path], name: str, exporter: str
) -> None:
    path = built(name, exporter)
    model = models_zoo.get_model(name)
    graph = onnx.load(str(path)).graph
    for value in list(graph.input) + list(graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        axes = model.dynamic_axes.get(value.name, {})
        for axis, dim in enumerate(dims):
            assert dim == axes.get(axis, dim) and (axis in axes) == isinstance(dim, str), (
                value.name,
                dims,
            )
    if name not in TRANSFORMERS:
        return
    session = _session(path)
    for sizes in ({"batch": 3}, {"batch": 1, "sequence": 5}, {"sequence": 64}):
        sizes = {k: v for k, v in sizes.items() if k in model.dim_values()}
        feeds = model.make_inputs(np.random.default_rng(7), model.shapes_for(sizes))
        for actual, ref in zip(session.run(None, feeds), _torch_outputs(name, feeds), strict=True):
            np.testing.assert_allclose(actual, ref, rtol=RTOL, atol=ATOL)


def _has_op(graph: onnx.GraphProto, op_type: str) -> bool:
    return any(node.op_type == op_type for node in graph.node)


def _depthwise_convs(graph: onnx.GraphProto) -> int:
    inits = {t.name: t for t in graph.initializer}
    count = 0
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            weight = inits[node.input[1]]
            assert weight.dims[0] == group and weight.dims[1] == 1  # (C, 1, kh, kw)
            count += 1
    return count


# Op types the coupling of each model needs to survive both exporters.
COUPLING_OPS = {
    "tiny_resnet": {"Conv", "Add", "Relu", "Gemm"},
    "tiny_mobilenet": {"Conv", "Clip", "Add"},
    "tiny_densenet": {"Concat", "BatchNormalization", "Conv", "AveragePool"},
    "tiny_shufflenet": {"Concat", "Transpose", "Reshape", "MaxPool"},
    "tiny_vit": {"Conv", "LayerNormalization", "MatMul", "Reshape", "Transpose", "Softmax", "Erf"},
    "tiny_bert": {"Gather", "LayerNormalization", "Softmax", "Erf", "Tanh", "Reshape"},
    "tiny_gpt": {"Gather", "LayerNormalization", "Softmax", "Where", "Slice", "Split"},
    "tiny_llama": {"Gather", "Pow", "ReduceMean", "Sqrt", "Neg", "Sigmoid", "Expand", "Where"},
}


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_export_keeps_the_coupling_structure(
    built: Callable[[str, str], pathlib.Path], name: str, exporter: str
) -> None:
    graph = onnx.load(str(built(name, exporter))).graph
    missing = {op for op in COUPLING_OPS[name] if not _has_op(graph, op)}
    assert not missing, f"{name}/{exporter} lost {missing}"
    counts = collections.Counter(node.op_type for node in graph.node)
    if name == "tiny_resnet":
        assert counts["Add"] == 4  # one residual Add per BasicBlock
        assert counts["Conv"] == 10  # stem + 4 blocks x 2 + 1x1 downsample
    if name in ("tiny_mobilenet", "tiny_shufflenet"):
        assert _depthwise_convs(graph) == {"tiny_mobilenet": 3, "tiny_shufflenet": 4}[name]
    if name == "tiny_shufflenet":
        # the channel split: Split (dynamo) or two Slices (TorchScript's chunk)
        assert counts["Split"] >= 2 or counts["Slice"] >= 4
    if exporter == "torchscript" and name in ("tiny_resnet", "tiny_mobilenet", "tiny_shufflenet"):
        assert counts["BatchNormalization"] == counts["Conv"]  # BN kept (training=PRESERVE)
    if name in ("tiny_gpt", "tiny_llama"):
        embedding = {"tiny_gpt": "wte.weight", "tiny_llama": "embed_tokens.weight"}[name]
        users = {node.op_type for node, _ in _consumers(graph)[embedding]}
        assert users == {"Gather", "MatMul"}, f"tied embedding consumers: {users}"


# --- cache behaviour -------------------------------------------------------------------------


def test_build_is_cached(
    built: Callable[[str, str], pathlib.Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = built("tiny_resnet", "torchscript")
    before = path.stat().st_mtime_ns

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached entry was exported again")

    monkeypatch.setattr(_export, "export_entry", no_export)
    assert models_zoo.build("tiny_resnet", "torchscript") == path
    assert path.stat().st_mtime_ns == before


def test_load_test_data_accepts_model_path(built: Callable[[str, str], pathlib.Path]) -> None:
    path = built("tiny_bert", "torchscript")
    feeds, outputs = models_zoo.load_test_data(path)
    assert set(feeds) == {"input_ids", "attention_mask"}
    assert [o.shape for o in outputs] == [(2, 16, 64), (2, 64)]
    with pytest.raises(FileNotFoundError):
        models_zoo.load_test_data(path.parent / "test_data_set_0")


@pytest.fixture
def tmp_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv(models_zoo.CACHE_ENV, str(tmp_path))
    assert models_zoo.cache_dir() == tmp_path
    return tmp_path


def _count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = _export.export_entry

    def counting(model: models_zoo.ZooModel, exporter: str, *args: object, **kw: object) -> object:
        calls.append(f"{model.name}-{exporter}")
        return real(model, exporter, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_export, "export_entry", counting)
    return calls


def test_cache_dir_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models_zoo.CACHE_ENV, raising=False)
    assert models_zoo.cache_dir() == pathlib.Path.home() / ".cache" / "spa-compiler"
    monkeypatch.setenv(models_zoo.CACHE_ENV, "/some/where")
    assert models_zoo.cache_dir() == pathlib.Path("/some/where")
    assert models_zoo.model_dir("tiny_gpt", "dynamo") == pathlib.Path(
        "/some/where/zoo/tiny_gpt-dynamo"
    )


def test_force_and_stale_entries_rebuild(
    tmp_cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_exports(monkeypatch)
    path = models_zoo.build("tiny_mobilenet", "torchscript")
    assert path.is_relative_to(tmp_cache / "zoo")
    models_zoo.build("tiny_mobilenet", "torchscript")
    assert calls == ["tiny_mobilenet-torchscript"]
    models_zoo.build("tiny_mobilenet", "torchscript", force=True)
    assert len(calls) == 2
    manifest = path.parent / _cache.MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"fingerprint": "', '"fingerprint": "old'))
    models_zoo.build("tiny_mobilenet", "torchscript")
    assert len(calls) == 3
    onnx.checker.check_model(str(path), full_check=True)
    leftovers = [p.name for p in (tmp_cache / "zoo").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [] and not list((tmp_cache / "zoo").glob(".old-*"))


def test_half_built_entry_is_never_visible(
    tmp_cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(
        model: models_zoo.ZooModel, exporter: str, folder: pathlib.Path, **kw: object
    ) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(_export, "export_entry", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        models_zoo.build("tiny_resnet", "torchscript")
    assert not models_zoo.model_dir("tiny_resnet", "torchscript").exists()
    assert [p.name for p in (tmp_cache / "zoo").iterdir()] == [".locks"]


def test_concurrent_builders_export_once(
    tmp_cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_exports(monkeypatch)
    results: list[pathlib.Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(models_zoo.build("tiny_densenet", "torchscript"))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 3
    assert calls == ["tiny_densenet-torchscript"]
    feeds, expected = models_zoo.load_test_data(results[0].parent)
    np.testing.assert_allclose(
        _session(results[0]).run(None, feeds)[0], expected[0], rtol=RTOL, atol=ATOL
    )

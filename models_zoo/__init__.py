"""models_zoo: tiny models built in code from a seed, exported with both torch.onnx exporters.

Each model is small (< 150k parameters), needs no download, and names the channel coupling it
exercises (residual Add groups, depthwise conv, Concat, Split + channel shuffle, attention heads,
grouped-query attention, tied embeddings); see README.md for the table.

Typical use:

    from spa_compiler import models_zoo

    path = models_zoo.build("tiny_resnet", "dynamo")        # exports once, then cached
    feeds, outputs = models_zoo.load_test_data(path.parent)  # golden I/O from torch (eval mode)

Exported entries live in `cache_dir()/zoo/<name>-<exporter>/` (`$SPA_COMPILER_CACHE`, default
`~/.cache/spa-compiler`), never in the repository. Only building needs torch (the `zoo` extra);
listing, shapes, sample inputs and reading a built entry do not import it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx
import onnx.numpy_helper

from spa_compiler.models_zoo._cache import CACHE_ENV, cache_dir
from spa_compiler.models_zoo._cache import build_entry as _build_entry
from spa_compiler.models_zoo._cache import entry_dir as _entry_dir
from spa_compiler.models_zoo._registry import MODELS
from spa_compiler.models_zoo._spec import Shape, ZooModel

__all__ = [
    "CACHE_ENV",
    "DEFAULT_SHAPES",
    "EXPORTERS",
    "MODELS",
    "Shape",
    "ZooModel",
    "build",
    "cache_dir",
    "default_shapes",
    "get_model",
    "list_models",
    "load",
    "load_test_data",
    "model_dir",
    "sample_inputs",
]

EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
"""torch.onnx exporters every model is exported with: `dynamo=False` and `dynamo=True`."""

DEFAULT_SHAPES: Mapping[str, Mapping[str, Shape]] = {
    name: dict(model.input_shapes) for name, model in MODELS.items()
}
"""Per model, the default shape of each input, e.g. `DEFAULT_SHAPES["tiny_gpt"]` ==
`{"input_ids": (2, 16)}`; the values to use for symbolic dims (shape hints) and the shapes of
the golden I/O."""

TEST_DATA_DIR = "test_data_set_0"


def list_models() -> list[str]:
    """Names of the zoo models, in registry order (CNNs first, then transformers)."""
    return list(MODELS)


def get_model(name: str) -> ZooModel:
    """The `ZooModel` called `name`; ValueError naming the valid ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(MODELS)}") from None


def default_shapes(name: str) -> dict[str, Shape]:
    """Default input shapes of model `name`, e.g. `{"input_ids": (2, 16)}`."""
    return dict(get_model(name).input_shapes)


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; valid exporters: {', '.join(EXPORTERS)}")


def model_dir(name: str, exporter: str = "torchscript") -> pathlib.Path:
    """Cache folder of one entry, `<cache>/zoo/<name>-<exporter>` (not built by this call)."""
    model = get_model(name)
    _check_exporter(exporter)
    return _entry_dir(model, exporter)


def build(name: str, exporter: str = "torchscript", *, force: bool = False) -> pathlib.Path:
    """Path of `model.onnx` for `name` exported with `exporter`, exporting it if needed.

    Exports when the entry is missing, was built from other sources or tool versions, or
    `force` is true; otherwise returns the cached path without importing torch. Safe to call
    from concurrent processes (see `_cache`).

    Raises:
        ValueError: `name` or `exporter` is unknown (the message lists the valid ones).
    """
    model = get_model(name)
    _check_exporter(exporter)
    return _build_entry(model, exporter, force=force)


def load(name: str, exporter: str = "torchscript") -> onnx.ModelProto:
    """The exported model as an `onnx.ModelProto` (built first if needed)."""
    return onnx.load(str(build(name, exporter)))


def load_test_data(
    model_dir: pathlib.Path | str,
) -> tuple[dict[str, npt.NDArray[np.generic]], list[npt.NDArray[np.generic]]]:
    """Read `<model_dir>/test_data_set_0`: `({input_name: array}, [output arrays in order])`.

    `model_dir` is the entry folder (`build(...).parent`); a path to `model.onnx` is accepted
    too. Inputs are keyed by the TensorProto names, which are the graph input names.
    """
    folder = pathlib.Path(model_dir)
    if folder.is_file():
        folder = folder.parent
    data = folder / TEST_DATA_DIR
    if not data.is_dir():
        raise FileNotFoundError(f"no {TEST_DATA_DIR}/ in {folder}; build the entry first")
    inputs: dict[str, npt.NDArray[np.generic]] = {}
    for path in _numbered(data, "input"):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        inputs[tensor.name] = onnx.numpy_helper.to_array(tensor)
    outputs = []
    for path in _numbered(data, "output"):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        outputs.append(onnx.numpy_helper.to_array(tensor))
    return inputs, outputs


def _numbered(folder: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    """`<prefix>_0.pb, <prefix>_1.pb, ...` in numeric order (not lexical: 10 after 9)."""
    paths = list(folder.glob(f"{prefix}_*.pb"))
    return sorted(paths, key=lambda p: int(p.stem.rpartition("_")[2]))


def sample_inputs(
    name: str, seed: int = 0, *, shapes: Mapping[str, Shape] | None = None
) -> dict[str, npt.NDArray[np.generic]]:
    """Fresh inputs for model `name` from `np.random.default_rng(seed)`.

    `seed=0` with default shapes reproduces the golden inputs; `shapes` overrides the
    default shape of some inputs (only along the model's dynamic axes, for an exported model).
    """
    return get_model(name).make_inputs(np.random.default_rng(seed), shapes)

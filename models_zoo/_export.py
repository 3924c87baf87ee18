"""Export one `ZooModel` with one torch.onnx exporter into a folder, with golden I/O.

Folder layout (the ONNX backend-test layout, as in onnxscript's testdata/):

    model.onnx                          self-contained (no external data)
    test_data_set_0/input_<i>.pb        TensorProto named after graph input i
    test_data_set_0/output_<i>.pb       TensorProto named after graph output i, from torch (eval)

Exporters:
    "torchscript": `torch.onnx.export(..., dynamo=False)`, opset 17, `dynamic_axes`, constant
        folding on (the exporter's default), `training=PRESERVE` on an eval-mode module so
        BatchNormalization nodes are kept (the default EVAL folds them into Conv); IR version as
        written (8).
    "dynamo": `torch.onnx.export(..., dynamo=True)`, opset 18, `dynamic_shapes` built from the
        same axes as `torch.export.Dim`s (one Dim per name, shared across inputs, bounded by
        `ZooModel.dim_max`), onnxscript optimizer on (the default; it folds BatchNorm into a
        preceding Conv and transposed Linear weights into initializers); saved with IR version 10
        (onnxruntime 1.31 reads at most IR 13, while onnx 1.23 stamps new protos with 14).

Apart from the model definitions (tiny_*.py), this is the only zoo module that imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import numpy.typing as npt
import onnx
import onnx.numpy_helper
import torch

from spa_compiler.models_zoo._spec import ZooModel

logger = logging.getLogger(__name__)

OPSETS: Mapping[str, int] = {"torchscript": 17, "dynamo": 18}
"""Opset each exporter is asked for."""

DYNAMO_IR_VERSION = 10
"""IR version written into dynamo exports (readable by onnxruntime >= 1.16)."""

MODEL_FILE = "model.onnx"
TEST_DATA_DIR = "test_data_set_0"


def export_entry(
    model: ZooModel, exporter: str, folder: pathlib.Path, *, seed: int = 0
) -> dict[str, npt.NDArray[np.generic]]:
    """Export `model` with `exporter` into `folder` and write its golden I/O there.

    Args:
        model: The zoo entry.
        exporter: "torchscript" or "dynamo" (validated by the caller).
        folder: An existing, empty folder.
        seed: Seeds the weights (torch) and the golden inputs (NumPy).

    Returns:
        The golden feeds, `{input_name: array}`.
    """
    module = model.make_module(seed)
    feeds = model.make_inputs(np.random.default_rng(seed))
    args = tuple(torch.from_numpy(feeds[name]) for name in model.input_names)
    path = folder / MODEL_FILE
    with _quiet():
        if exporter == "torchscript":
            _export_torchscript(model, module, args, path)
        else:
            _export_dynamo(model, module, args, path)
        with torch.no_grad():
            outputs = module(*args)
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    _write_test_data(
        folder / TEST_DATA_DIR,
        feeds,
        {name: out.numpy() for name, out in zip(model.output_names, outputs, strict=True)},
    )
    return feeds


_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "onnxscript",
    "onnx_ir",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' expected noise for the duration of one export.

    Warnings: the TorchScript exporter's deprecation, TracerWarnings on shape-to-int
    conversions, torch.export FutureWarnings. Logs below ERROR from the exporters' loggers: the
    onnxscript optimizer's per-rewrite INFO lines, "torchvision is not installed" warnings.
    Levels are restored afterwards; nothing global is left changed.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    saved = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def _export_torchscript(
    model: ZooModel, module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: pathlib.Path
) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,
        opset_version=OPSETS["torchscript"],
        input_names=list(model.input_names),
        output_names=list(model.output_names),
        dynamic_axes={k: dict(v) for k, v in model.dynamic_axes.items()} or None,
        do_constant_folding=True,
        # The module is in eval mode either way; PRESERVE (instead of the default EVAL) only
        # skips the eval peephole that folds BatchNorm into the preceding Conv, so the
        # conv→BN→ReLU chains stay visible to the compiler's own fold-batchnorm pass.
        training=torch.onnx.TrainingMode.PRESERVE,
    )


def _export_dynamo(
    model: ZooModel, module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: pathlib.Path
) -> None:
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = []
    for name in model.input_names:
        axes = model.dynamic_axes.get(name, {})
        spec = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                dims[dim_name] = torch.export.Dim(dim_name, max=model.dim_max.get(dim_name, 2**16))
            spec[axis] = dims[dim_name]
        dynamic_shapes.append(spec or None)
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=OPSETS["dynamo"],
        input_names=list(model.input_names),
        output_names=list(model.output_names),
        dynamic_shapes=tuple(dynamic_shapes) if dims else None,
        optimize=True,
        verbose=False,
        report=False,
        external_data=False,
    )
    if program is None:  # only the TorchScript path returns None
        raise RuntimeError(f"torch.onnx.export(dynamo=True) returned no program for {model.name!r}")
    proto = program.model_proto
    proto.ir_version = DYNAMO_IR_VERSION
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _write_test_data(
    folder: pathlib.Path,
    inputs: Mapping[str, npt.NDArray[np.generic]],
    outputs: Mapping[str, npt.NDArray[np.generic]],
) -> None:
    folder.mkdir()
    for prefix, tensors in (("input", inputs), ("output", outputs)):
        for i, (name, array) in enumerate(tensors.items()):
            tensor = onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
            (folder / f"{prefix}_{i}.pb").write_bytes(tensor.SerializeToString())

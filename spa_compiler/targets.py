"""Deployment targets: what each runtime accepts (IR version, opsets) and how it runs."""

from __future__ import annotations

import dataclasses

from spa_compiler.errors import UnsupportedModelError, UsageError
from spa_compiler.ir import ModelIR


@dataclasses.dataclass(frozen=True)
class Target:
    """A runtime we emit for.

    Attributes:
        name: CLI name.
        description: One line.
        max_ir_version: Highest IR version the oldest runtime release we support loads.
        max_opset: Highest default-domain opset it implements.
        providers: ONNX Runtime execution providers (empty for TensorRT).
    """

    name: str
    description: str
    max_ir_version: int
    max_opset: int
    providers: tuple[str, ...] = ()


# onnxruntime 1.31 loads IR <= 13 (onnx 1.23 writes 14 by default); TensorRT 10's ONNX parser
# is built on onnx 1.16 (IR 10, opset 21 at most... ops beyond 20 are rare in exported models).
TARGETS: dict[str, Target] = {
    "ort-cpu": Target("ort-cpu", "ONNX Runtime, CPU execution provider", 13, 23, ("CPUExecutionProvider",)),
    "ort-cuda": Target(
        "ort-cuda",
        "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)",
        13,
        23,
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
    ),
    # TensorRT 10's parser takes opsets up to 20-22 depending on the release; TensorRT-RTX 1.7 parses
    # IR 8..14 and opsets 13..25 (measured here). We emit IR 10 for both.
    "tensorrt": Target("tensorrt", "TensorRT engine built from the ONNX file", 10, 21),
}


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx512f" in line for line in fh)
    except OSError:
        return False


def width_multiple(name: str) -> int:
    """The channel multiple the target runs fastest at; pruned widths are rounded to it by default.

    ONNX Runtime CPU lays convolutions out in blocks of 8 channels (AVX2) or 16 (AVX-512) and falls
    back to slower kernels, with layout reorders around them, when a width is not a multiple:
    EfficientNet-Lite0 on this machine measured 0.36x of dense with every group at exactly half its
    channels and 0.93x with a slightly different share that gave odd widths. GPU tensor cores (CUDA,
    TensorRT) take fp16 operands in multiples of 8.
    """
    get_target(name)
    if name == "ort-cpu":
        return 16 if _cpu_has_avx512() else 8
    return 8


def get_target(name: str) -> Target:
    """Look a target up by name; UsageError listing the valid ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError as e:
        raise UsageError(f"unknown target {name!r}", hint=f"use one of {', '.join(TARGETS)}") from e


def output_ir_version(model: ModelIR, target: Target) -> int:
    """The IR version to write for `target`: the input's, capped by what the target loads."""
    return min(model.ir_version, target.max_ir_version)


def check_opset(model: ModelIR, target: Target) -> None:
    """Raise UnsupportedModelError if the model's opset is beyond what the target implements."""
    if model.opset > target.max_opset:
        raise UnsupportedModelError(
            f"the model uses opset {model.opset}; target {target.name} supports at most {target.max_opset}",
            hint=f"re-export with opset_version<={target.max_opset}",
        )

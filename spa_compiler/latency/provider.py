"""Latency providers: one interface over ONNX Runtime CPU/CUDA, TensorRT and the analytic model.

Each runtime has its own module (`ort_cpu`, `ort_cuda`, `tensorrt`, `analytic`); the target decides
which one serves it (`spa_compiler.targets.Target.provider`). A provider times a whole model on the target with fixed inputs (warm-up, then the median of many
runs). When the target's device is not available (TensorRT without a supported GPU, ORT CUDA
without onnxruntime-gpu) and the caller allows it, the analytic model stands in, and every number it
gives is labelled `kind="analytic"` so reports never pass an estimate off as a measurement.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.ir import ModelIR

logger = logging.getLogger(__name__)

Feeds = Mapping[str, npt.NDArray[np.generic]]


@dataclasses.dataclass(frozen=True)
class Timing:
    """One whole-model latency: measured (median of `runs`) or analytic."""

    ms: float
    kind: str  # "measured" | "analytic"
    runs: int
    p10_ms: float | None = None
    p90_ms: float | None = None


class LatencyProvider(Protocol):
    """Times whole models on one target."""

    kind: str

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        """Latency of one inference of `model` on `feeds`."""

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        """Latencies of several models timed in alternation (run a, b, a, b, ...), so that a
        change of machine load in the meantime affects all of them alike."""

    def provenance(self) -> dict[str, Any]:
        """Device, runtime and version, provider, threads, precision (for tables and reports)."""


def as_proto(model: ModelIR | onnx.ModelProto) -> onnx.ModelProto:
    return model.to_proto() if isinstance(model, ModelIR) else model


def interleaved(
    runners: Sequence[Any], *, warmup: int, runs: int, min_seconds: float
) -> list[Timing]:
    """Time callables in alternation; one Timing per callable (see `measure.time_callables`)."""
    from spa_compiler.latency.timing import time_callables

    return [
        Timing(median, "measured", n, p10, p90)
        for median, p10, p90, n in time_callables(runners, warmup=warmup, runs=runs, min_seconds=min_seconds)
    ]

"""Latency providers: one interface over ONNX Runtime CPU/CUDA, TensorRT and the analytic model.

A provider times a whole model on the target with fixed inputs (warm-up, then the median of many
runs). When the target's device is not available (TensorRT without a supported GPU, ORT CUDA
without onnxruntime-gpu) and the caller allows it, the analytic model stands in, and every number it
gives is labelled `kind="analytic"` so reports never pass an estimate off as a measurement.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.errors import MissingRequirementError
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


def _proto(model: ModelIR | onnx.ModelProto) -> onnx.ModelProto:
    return model.to_proto() if isinstance(model, ModelIR) else model


def _interleaved(
    runners: Sequence[Any], *, warmup: int, runs: int, min_seconds: float
) -> list[Timing]:
    """Time callables in alternation; one Timing per callable (see `measure.time_callables`)."""
    from spa_compiler.latency.timing import time_callables

    return [
        Timing(median, "measured", n, p10, p90)
        for median, p10, p90, n in time_callables(runners, warmup=warmup, runs=runs, min_seconds=min_seconds)
    ]


class SessionCache:
    """Sessions (or anything built per model) reused while the model's structure is unchanged.

    Keyed by `structure_fingerprint` (nodes, attributes, shapes; not weight values: a provider
    only times, and the latency does not depend on the values), least recently used first out.
    The dense model, timed against every variant of a latency table and every search candidate,
    is built once instead of once per timing (a ResNet-50 CPU session takes ~0.7 s to build).
    Shared by the copies `dataclasses.replace` makes of a provider.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.items: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, model: ModelIR | onnx.ModelProto, build: Any) -> Any:
        from spa_compiler.latency.table import structure_fingerprint

        key = structure_fingerprint(model)
        if key in self.items:
            self.hits += 1
            self.items[key] = self.items.pop(key)  # most recently used last
            return self.items[key]
        self.misses += 1
        value = build(model)
        self.items[key] = value
        while len(self.items) > self.size:
            del self.items[next(iter(self.items))]
        return value

    def __deepcopy__(self, memo: Any) -> SessionCache:
        return self  # sessions cannot be copied; copies of a provider share them


@dataclasses.dataclass
class OrtCpuProvider:
    """ONNX Runtime CPU execution provider, fixed thread count."""

    threads: int | None = 1
    runs: int = 30
    min_seconds: float = 0.3
    kind: str = "measured"
    sessions: SessionCache = dataclasses.field(default_factory=SessionCache, repr=False, compare=False)

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        from spa_compiler.ort import make_session

        runners = []
        for m in models:
            # a ModelIR goes to ORT with its own arrays (no exported copy of the weights)
            sess = self.sessions.get(m, lambda m: make_session(m, threads=self.threads, optimize=True))
            runners.append(lambda sess=sess: sess.run(None, dict(feeds)))
        return _interleaved(runners, warmup=3, runs=self.runs, min_seconds=self.min_seconds)

    def provenance(self) -> dict[str, Any]:
        from spa_compiler.ort import import_ort

        return {
            "device": f"{platform.processor() or platform.machine()} CPU",
            "runtime": "onnxruntime",
            "runtime_version": import_ort().__version__,
            "provider": "CPUExecutionProvider",
            "threads": self.threads,
            "precision": "fp32",
        }


@dataclasses.dataclass
class OrtCudaProvider:
    """ONNX Runtime CUDA execution provider with io-binding (fp32, or an fp16 copy for timing)."""

    fp16: bool = False
    runs: int = 50
    min_seconds: float = 0.3
    kind: str = "measured"
    sessions: SessionCache = dataclasses.field(default_factory=SessionCache, repr=False, compare=False)

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        return self.time_many([model], feeds)[0]

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        from spa_compiler.latency.ort_cuda import convert_float16, iobound_runner, make_cuda_session

        def build(m: ModelIR | onnx.ModelProto) -> Any:
            proto = _proto(m)
            if self.fp16:  # the fp16 conversion, too, is made once per structure
                proto = convert_float16(proto)
            return make_cuda_session(proto)

        runners = []
        for m in models:
            runners.append(iobound_runner(self.sessions.get(m, build), feeds))
        return _interleaved(runners, warmup=10, runs=self.runs, min_seconds=self.min_seconds)

    def provenance(self) -> dict[str, Any]:
        from spa_compiler.ort import import_ort

        device = "CUDA GPU"
        try:  # torch is optional; it only names the device
            import torch

            if torch.cuda.is_available():
                device = torch.cuda.get_device_name(0)
        except ImportError:
            pass
        return {
            "device": device,
            "runtime": "onnxruntime",
            "runtime_version": import_ort().__version__,
            "provider": "CUDAExecutionProvider",
            "threads": None,
            "precision": "fp16" if self.fp16 else "fp32",
        }


@dataclasses.dataclass
class AnalyticProvider:
    """The roofline model of `spa_compiler.latency.analytic` (labelled analytic everywhere)."""

    device: str = "cpu-generic"
    input_shapes: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)
    kind: str = "analytic"

    def time(self, model: ModelIR | onnx.ModelProto, feeds: Feeds) -> Timing:
        from spa_compiler.latency.analytic import estimate_model

        shapes = dict(self.input_shapes) or {k: tuple(v.shape) for k, v in feeds.items()}
        # the estimate reads dims, not weight values
        proto = model.to_proto(weights=False) if isinstance(model, ModelIR) else model
        est = estimate_model(proto, self.device, input_shapes=shapes)
        return Timing(float(est.total_ms), "analytic", 0)

    def time_many(self, models: Sequence[ModelIR | onnx.ModelProto], feeds: Feeds) -> list[Timing]:
        return [self.time(m, feeds) for m in models]

    def provenance(self) -> dict[str, Any]:
        return {
            "device": f"analytic:{self.device}",
            "runtime": "analytic",
            # the model's version is the tool's: a table profiled with it names a real version
            "runtime_version": _tool_version(),
            "provider": None,
            "threads": None,
            "precision": "fp16" if "fp16" in self.device else "fp32",
        }


def _tool_version() -> str:
    from spa_compiler import __version__

    return __version__


def make_provider(
    target: str,
    *,
    precision: str = "fp32",
    threads: int | None = 1,
    runs: int = 30,
    allow_analytic: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> LatencyProvider:
    """The provider that times `target` here, or the analytic stand-in (if allowed).

    Raises:
        MissingRequirementError: the target's device is not available and analytic is not allowed.
    """
    if target == "ort-cpu":
        return OrtCpuProvider(threads=threads, runs=runs)
    if target == "ort-cuda":
        from spa_compiler.latency.ort_cuda import cuda_available

        if cuda_available():
            return OrtCudaProvider(fp16=precision == "fp16", runs=runs)
        why = "target ort-cuda needs onnxruntime-gpu and a CUDA GPU, which this machine lacks"
        device = "h200-fp16" if precision == "fp16" else "h200-fp32"
    elif target == "tensorrt":
        why = "timing TensorRT engines needs full TensorRT and a supported GPU"
        device = "h200-fp16" if precision == "fp16" else "h200-fp32"
    else:  # pragma: no cover - targets are validated before
        raise ValueError(target)
    if not allow_analytic:
        raise MissingRequirementError(why, hint="run on the target machine, or pass --latency-table TABLE.json")
    logger.warning("%s: using the analytic latency model (%s) instead of measurements", why, device)
    return AnalyticProvider(device=device, input_shapes=dict(input_shapes or {}))

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
    #: 95% half-interval (relative) of the ratio to the first model timed in the same alternation
    ci: float | None = None


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
    runners: Sequence[Any], *, warmup: int, runs: int, min_seconds: float, rel_ci: float = 0.0,
    min_runs: int = 3,
) -> list[Timing]:
    """Time callables in alternation; one Timing per callable (see `timing.time_callables`: with
    `rel_ci`, a stopping rule on the confidence interval of the ratios to the first callable)."""
    from spa_compiler.latency.timing import time_callables

    cis: list[float] = []
    out = time_callables(runners, warmup=warmup, runs=runs, min_seconds=min_seconds, rel_ci=rel_ci,
                         min_runs=min_runs, ci_out=cis)
    return [Timing(median, "measured", n, p10, p90, ci) for (median, p10, p90, n), ci in zip(out, cis)]


class SessionCache:
    """Sessions (or anything built per model) reused while the model's structure is unchanged.

    Keyed by `structure_fingerprint` (nodes, attributes, shapes; not weight values: a provider
    only times, and the latency does not depend on the values), least recently used first out.
    The dense model, timed against every variant of a latency table and every search candidate,
    is built once instead of once per timing (a ResNet-50 CPU session takes ~0.7 s to build; a
    CUDA one and its fp16 conversion more). Shared by the copies `dataclasses.replace` makes of a
    provider (it is an init field holding this object).
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.items: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, model: ModelIR | onnx.ModelProto, build: Any) -> Any:
        """The value built for `model`'s structure, building it (``build(model)``) on a miss."""
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

    def hold(self, at_least: int) -> _Held:
        """A context in which the cache keeps at least `at_least` entries (e.g. the dense model and
        a batch of variants timed in one alternation), back to its size after."""
        return _Held(self, at_least)


class _Held:
    def __init__(self, cache: SessionCache, at_least: int) -> None:
        self.cache, self.at_least, self.size = cache, at_least, cache.size

    def __enter__(self) -> SessionCache:
        self.cache.size = max(self.size, self.at_least)
        return self.cache

    def __exit__(self, *exc: object) -> None:
        self.cache.size = self.size
        while len(self.cache.items) > self.size:
            del self.cache.items[next(iter(self.cache.items))]


def timing_variant(provider: Any, **changes: Any) -> Any:
    """A copy of `provider` with timing settings changed (`runs`, `min_seconds`, `warmup`,
    `rel_ci`): only the fields the provider has; through wrappers that time with an `inner`
    provider (`lowering.provider.LoweredProvider`). The copy shares the provider's sessions."""
    if not dataclasses.is_dataclass(provider) or isinstance(provider, type):
        return provider
    names = {f.name for f in dataclasses.fields(provider)}
    if "inner" in names and not {"runs", "min_seconds"} & names:
        return dataclasses.replace(provider, inner=timing_variant(provider.inner, **changes))
    own = {k: v for k, v in changes.items() if k in names}
    return dataclasses.replace(provider, **own) if own else provider


def timing_settings(provider: Any) -> dict[str, Any]:
    """The timing fields of `provider` (or of the provider it wraps), for deriving changes."""
    inner = getattr(provider, "inner", None)
    if inner is not None and not hasattr(provider, "runs"):
        return timing_settings(inner)
    return {k: getattr(provider, k) for k in ("runs", "min_seconds", "warmup", "rel_ci") if hasattr(provider, k)}

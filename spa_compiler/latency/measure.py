"""Timing a whole model on ONNX Runtime: warm-up, then the median of many runs, fixed threads."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.ir import ModelIR
from spa_compiler.runtime import import_ort, make_session


@dataclasses.dataclass(frozen=True)
class LatencyMeasurement:
    """A timed model: median and spread of wall-clock times of `session.run`, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    provider: str
    threads: int | None
    runtime: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for reports and tables."""
        return dataclasses.asdict(self)


def measure_ort(
    model: onnx.ModelProto | ModelIR | str,
    feeds: Mapping[str, npt.NDArray[np.generic]],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 30,
    min_seconds: float = 0.0,
) -> LatencyMeasurement:
    """Median latency of one inference with ONNX Runtime (graph optimizations on).

    Args:
        model: Model, ModelIR or path.
        feeds: Inputs.
        providers: Execution providers.
        threads: Intra-op threads (fixed for comparable numbers; None: ORT's default).
        warmup: Untimed runs first.
        runs: Timed runs (at least).
        min_seconds: Keep running until this much time is spent timing (more samples for fast models).
    """
    sess = make_session(model, providers=providers, threads=threads, optimize=True)
    feeds = dict(feeds)
    for _ in range(warmup):
        sess.run(None, feeds)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 100 * max(runs, 1):
            break
    qs = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return LatencyMeasurement(
        median_ms=statistics.median(times),
        p10_ms=qs[0],
        p90_ms=qs[-1],
        runs=len(times),
        provider=sess.get_providers()[0],
        threads=threads,
        runtime=f"onnxruntime {import_ort().__version__}",
    )

"""Timing a whole model on ONNX Runtime: warm-up, then the median of many runs, fixed threads."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.ir import ModelIR
from spa_compiler.ort import import_ort, make_session


def time_callables(
    runners: Sequence[Callable[[], object]], *, warmup: int, runs: int, min_seconds: float = 0.0
) -> list[tuple[float, float, float, int]]:
    """Time callables in alternation (a, b, a, b, ...) after `warmup` untimed calls of each.

    Alternation makes their ratio immune to changes of machine load during the measurement. Each
    callable must block until its work is done. Stops after `runs` rounds once `min_seconds` have
    passed (at most 100 x runs rounds). Returns (median, p10, p90, rounds) in milliseconds per callable.
    """
    for r in runners:
        for _ in range(warmup):
            r()
    times: list[list[float]] = [[] for _ in runners]
    started = time.perf_counter()
    while len(times[0]) < runs or time.perf_counter() - started < min_seconds:
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            r()
            times[i].append((time.perf_counter() - t0) * 1e3)
        if len(times[0]) >= 100 * max(runs, 1):
            break
    out = []
    for ts in times:
        qs = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
        out.append((statistics.median(ts), qs[0], qs[-1], len(ts)))
    return out


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
    return measure_runner(lambda: sess.run(None, feeds), provider=sess.get_providers()[0], threads=threads,
                          runtime=f"onnxruntime {import_ort().__version__}", warmup=warmup, runs=runs,
                          min_seconds=min_seconds)


def measure_runner(
    runner: Callable[[], object], *, provider: str, threads: int | None, runtime: str, warmup: int, runs: int,
    min_seconds: float,
) -> LatencyMeasurement:
    """Time one blocking callable (`time_callables`) and describe it as a LatencyMeasurement."""
    ((median, p10, p90, n),) = time_callables([runner], warmup=warmup, runs=runs, min_seconds=min_seconds)
    return LatencyMeasurement(median_ms=median, p10_ms=p10, p90_ms=p90, runs=n, provider=provider, threads=threads,
                              runtime=runtime)

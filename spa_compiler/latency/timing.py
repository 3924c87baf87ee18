"""Timing a whole model on ONNX Runtime: warm-up, then the median of many runs, fixed threads."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import onnx

from spa_compiler.ir import ModelIR
from spa_compiler.ort import import_ort, make_session


def time_callables(
    runners: Sequence[Callable[[], object]], *, warmup: int, runs: int, min_seconds: float = 0.0,
    rel_ci: float = 0.0, min_runs: int = 3, ci_out: list[float] | None = None,
) -> list[tuple[float, float, float, int]]:
    """Time callables in alternation (a, b, a, b, ...) after `warmup` untimed calls of each.

    Alternation makes their ratio immune to changes of machine load during the measurement. Each
    callable must block until its work is done. Stops after `runs` rounds once `min_seconds` have
    passed (at most 100 x runs rounds). Returns (median, p10, p90, rounds) in milliseconds per callable.

    `rel_ci` > 0 is a stopping rule for ratios to the first callable (the reference, e.g. the dense
    model): after at least `min_runs` rounds, timing stops as soon as, for every other callable, the
    95% confidence interval of its per-round ratio to the reference (normal approximation on the
    log ratios of the paired rounds) is within +-`rel_ci`; `runs` is then the most rounds taken.
    `ci_out`, when given, receives each callable's 95% half-interval of that ratio (0 for the first).
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
        if rel_ci > 0 and len(times[0]) >= max(2, min_runs) and ratio_ci(times) <= rel_ci:
            break
    out = []
    for ts in times:
        qs = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
        out.append((statistics.median(ts), qs[0], qs[-1], len(ts)))
    if ci_out is not None:
        ci_out[:] = [0.0] + [ratio_ci([times[0], ts]) for ts in times[1:]]
    return out


def ratio_ci(times: Sequence[Sequence[float]]) -> float:
    """The widest 95% half-interval (relative) of the paired ratios times[i] / times[0], i >= 1.

    Normal approximation on the per-round log ratios; 0.0 for a single callable, inf for fewer
    than two rounds."""
    if len(times) < 2:
        return 0.0
    n = len(times[0])
    if n < 2:
        return math.inf
    worst = 0.0
    ref = times[0]
    for ts in times[1:]:
        logs = [math.log(max(t, 1e-9) / max(d, 1e-9)) for t, d in zip(ts, ref)]
        half = 1.96 * statistics.stdev(logs) / math.sqrt(n)
        worst = max(worst, math.expm1(half))
    return worst


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

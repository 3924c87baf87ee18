"""The groups' greedy OBS paths in worker processes (numpy backend, several cores).

Each group's path (`paths.relative_obs_path`) depends only on its own consumers' weights and
Hessians, so the paths of different groups are independent. On a machine with several cores and
no CUDA GPU, `PathPool` runs the large ones in forked worker processes (longest first), each with
one BLAS thread, and hands back the orders the serial loop computes and its errors to rounding
(the same code on the same arrays; a worker's BLAS sums in another order with one thread than the
parent's with several: tests/core/test_parallel_paths.py). The workers read the Hessians from the
parent's memory as it was when they were forked (nothing is pickled but the results).

Used only when it pays: at least two groups, several cores, the `fork` start method, no torch
device for any layer (the CUDA path is serial: one GPU), and enough work (`MIN_WORK`, the sum of
k^2 x steps). `SPA_COMPILER_WORKERS` caps the workers (1: serial).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

#: Below this much work (sum over groups of columns^2 x greedy steps) the paths run serially.
MIN_WORK = 2e9

_JOBS: list[tuple[str, Any, Any, int, int]] = []  # read by forked workers
_DONE: Any = None  # shared step counter
_FN: list[Callable[..., Any]] = []  # the path function (paths.relative_obs_path), set by the caller


def workers_wanted() -> int:
    """Worker processes to use: SPA_COMPILER_WORKERS, else the cores this process may use."""
    raw = os.environ.get("SPA_COMPILER_WORKERS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _set_blas_threads(n: int) -> None:
    """One BLAS thread in a worker (OpenBLAS through ctypes; a no-op when not found)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = [line.split()[-1] for line in f if len(line.split()) >= 6]
    except OSError:
        return
    libs = {p for p in paths if "openblas" in p.lower() and ".so" in p}
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))


def _init() -> None:
    _set_blas_threads(1)


def _run(i: int) -> tuple[str, list[int], Any]:
    relative_obs_path = _FN[0]
    gid, views, hs, n_units, n_remove = _JOBS[i]
    last = [0]

    def step(done: int, total: int) -> None:
        del total
        if done - last[0] >= 16 or done == n_remove:
            with _DONE.get_lock():
                _DONE.value += done - last[0]
            last[0] = done

    order, errs = relative_obs_path(views, hs, n_units, n_remove, step)
    return gid, order, errs


class PathPool:
    """Collects the groups' path jobs, then runs them in worker processes (`results`)."""

    def __init__(self, workers: int, path_fn: Callable[..., Any]) -> None:
        self.workers = workers
        self.path_fn = path_fn
        self.jobs: list[tuple[str, Any, Any, int, int]] = []
        self.work: list[float] = []

    @classmethod
    def for_groups(cls, sizes: Sequence[tuple[int, int]], path_fn: Callable[..., Any]) -> PathPool | None:
        """A pool when the groups' paths are worth spreading, else None (serial).

        `sizes`: per group with consumers, (sum of its consumers' columns^2, greedy steps);
        `path_fn`: (views, hessians, n_units, n_remove, step) -> (order, errors), run in the workers."""
        from spa_compiler.criteria.backend import torch_device

        workers = min(workers_wanted(), len(sizes))
        if workers < 2 or "fork" not in mp.get_all_start_methods():
            return None
        if sum(float(k2) * n for k2, n in sizes) < MIN_WORK:
            return None
        widest = max((int(k2 ** 0.5) for k2, _ in sizes), default=0)
        if torch_device(widest) is not None:
            return None  # torch paths (a GPU): serial
        return cls(workers, path_fn)

    def submit(self, gid: str, views: Any, hessians: Any, n_units: int, n_remove: int) -> None:
        self.jobs.append((gid, views, hessians, n_units, n_remove))
        self.work.append(sum(float(h.shape[0]) ** 2 for h in hessians) * max(n_remove, 1))

    def results(self, progress: Callable[[int], None] | None = None) -> dict[str, tuple[list[int], Any]]:
        """group id -> (order, errors), computed in `workers` forked processes, longest first."""
        global _DONE
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if not self.jobs:
            return {}
        _JOBS[:] = self.jobs
        _FN[:] = [self.path_fn]
        ctx = mp.get_context("fork")
        _DONE = ctx.Value("q", 0)
        out: dict[str, tuple[list[int], Any]] = {}
        try:
            with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init) as ex:
                order = sorted(range(len(self.jobs)), key=lambda i: -self.work[i])
                pending = {ex.submit(_run, i) for i in order}
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        gid, o, e = fut.result()
                        out[gid] = ([int(u) for u in o], e)
                    if progress is not None:
                        progress(int(_DONE.value))
        finally:
            _JOBS.clear()
            _FN.clear()
            _DONE = None
        return out


__all__ = ["PathPool", "workers_wanted", "MIN_WORK"]

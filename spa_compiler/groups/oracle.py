"""The exact test oracle of docs/algorithms.md §1, as a function tests and tools can call.

For a plan (group id -> units removed): run the original model with whatever reads those units
zeroed (`channel_groups.masked_dense`), run the physically pruned model (`prune_groups`), and
compare. They must agree to float rounding for every non-hidden group; the original model is
not changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from spa_compiler.groups.analysis import ALL_UNITS, analyze, masked_dense, prune_groups
from spa_compiler.ir import ModelIR
from spa_compiler.ort import run


@dataclasses.dataclass(frozen=True)
class OracleResult:
    """Outcome of one oracle check.

    Attributes:
        max_abs: Largest |masked_dense - pruned| over all outputs.
        max_rel: max_abs divided by the largest |masked_dense| (0 when that is 0).
        params_before: Parameters of the original model.
        params_after: Parameters of the pruned model.
        pruned: The pruned model (a clone; the input model is untouched).
    """

    max_abs: float
    max_rel: float
    params_before: int
    params_after: int
    pruned: ModelIR


def oracle_check(
    model: ModelIR,
    plan: Mapping[str, Sequence[int]],
    feeds: Mapping[str, npt.NDArray[np.generic]],
    *,
    include_hidden: bool = False,
) -> OracleResult:
    """Prune a clone of `model` by `plan` and compare it with the masked-dense reference."""
    work = model.clone()
    analysis = analyze(work, units=ALL_UNITS, include_hidden=include_hidden)
    reference = masked_dense(work, plan, analysis=analysis)
    want = run(reference, feeds)
    stats = prune_groups(work, plan, analysis=analysis)
    got = run(work, feeds)
    max_abs = 0.0
    scale = 0.0
    for a, b in zip(want, got, strict=False):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            raise AssertionError(f"output shape changed: {a64.shape} -> {b64.shape}")
        max_abs = max(max_abs, float(np.max(np.abs(a64 - b64))) if a64.size else 0.0)
        scale = max(scale, float(np.max(np.abs(a64))) if a64.size else 0.0)
    return OracleResult(
        max_abs,
        max_abs / scale if scale else 0.0,
        stats["params_before"],
        stats["params_after"],
        work,
    )

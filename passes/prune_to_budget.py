"""Latency-driven structured pruning: per-group levels chosen to meet a measured latency budget.

Before:  every coupled-channel group dense (heads, FFN neurons, conv channels).
After:   each prunable group keeps k_g of its units, chosen by dynamic programming to minimize the
         summed criterion error subject to the latency budget (ZipLM / SPDY), and verified by timing
         the whole rewritten model: while the measurement misses the budget the internal budget is
         corrected by the measured/predicted gap and the search repeated (`search.loop`). With OBS
         criteria the consumers' remaining weights are re-fitted (exact least squares on the kept
         columns).

Without a budget, every group loses the same share `ratio` of its units (as `prune-uniform`). A
budget that cannot be met without more than `max-error` mean relative error (default: the
context's, else 0.35) is reported unreachable, with the best latency that can be reached within the
bound, and the model is pruned to that best point instead of being gutted.

Requirements: a latency model (a measured provider or a latency table) when a budget is given;
calibration data for criterion obs/wanda.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import PassResult
from spa_compiler.passes._pruning import PruningPass


@dataclasses.dataclass(frozen=True)
class PruneToBudgetPass(PruningPass):
    """Prune each coupled-channel group to its own level, chosen to meet a measured latency budget.

    Besides `PruningPass`'s options (passes/_pruning.py), it has its own.

    Options:
        levels: Levels per group in the latency search (dense included).
    """

    name: ClassVar[str] = "prune-to-budget"

    levels: int = 8

    def _level_count(self) -> int:
        return self.levels

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return self.run_pruning(model, ctx, uniform_search=False)

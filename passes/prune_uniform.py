"""Uniform structured pruning: every coupled-channel group loses the same share of its units.

Before:  any graph; `groups.analysis` finds every coupled-channel group: conv channels with their
         BN / residual / concat partners, attention heads (Q, K, V rows and O columns; with GQA a
         key/value head with its query group), FFN neurons (up/gate rows, down columns),
         optionally head dimensions and the hidden width.
After:   every prunable group keeps the same share of its units, those the criterion ranks most
         important (`criteria.registry`: magnitude, wanda, obs, obspa; OBS criteria re-fit the
         consumers' surviving weights); every tensor and shape constant of a group is rewritten at
         once. Without a latency budget the share is `ratio`; with one, the share is searched on
         measurements until the model meets the budget: the common tools' baseline, at the same
         measured latency as `prune-to-budget`.

Groups that are frozen (graph inputs/outputs, softmax/reduction axes, unknown ops, ...) are never
touched; their count by reason is in `skipped`.

Requirements: calibration data for criterion obs/wanda; a latency model with a budget.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import PassResult
from spa_compiler.passes._pruning import PruningPass


@dataclasses.dataclass(frozen=True)
class PruneUniformPass(PruningPass):
    """Remove the same share of units from every coupled-channel group (a ratio, or searched to a budget).

    Its options are `PruningPass`'s (passes/_pruning.py); `spa-compile list-passes` lists them.
    """

    name: ClassVar[str] = "prune-uniform"

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return self.run_pruning(model, ctx, uniform_search=True)

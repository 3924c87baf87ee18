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

    Options:
        criterion: auto (obs with --calib, else obspa), magnitude, wanda, obs or obspa.
        units: Unit kinds to prune: channel, head, neuron, head_dim (hidden with include-hidden).
        ratio: Share of units removed per group when no latency budget is given.
        max_ratio: At most this share of any group's units is removed.
        round_to: Kept widths are multiples of this (0: with a budget the target's multiple, see
            targets.width_multiple; without one 1, the ratio as asked).
        norm: Norm of the magnitude criterion, l1 or l2.
        normalize: Magnitude: divide each member's scores by their mean before summing.
        min_units: Groups with fewer units are left alone.
        include_hidden: Also prune the hidden (residual) width; approximate (norms change).
        max_iters: Measure-and-correct rounds of the search (with a budget).
        tolerance: Accept a measured latency within this fraction under the budget.
        safety: Aim this fraction under the budget, against timing noise in the final check.
        max_error: Mean relative error bound (negative: the context's or the default).
        synthetic_feeds: Random input feeds the data-free criterion (obspa) uses.
        synthetic_tokens: For language models, at least this many synthetic tokens in all.
        lm_rounds: For language models, rounds of re-sampling the random tokens from the model itself.
        moments: obspa: auto (BatchNorm closed form where it applies) or response (random inputs).
        error_feeds: With a budget, feeds on which every searched plan's end-to-end output error
            against the dense model is measured (see search.output_error): KL of next-token logits,
            else 1 - cosine of outputs. -1 (auto): calibration feeds up to 1024 output rows, off
            without calibration; N > 0: N feeds (calibration, else synthetic); 0: off.
        max_output_error: Bound on that measured output error; plans above it do not count as
            meeting the budget (negative: no bound).
        error_classes: Re-weight each unit kind's errors by its measured / predicted output error
            (measured once, on the first plan, one kind at a time).
        sequential: obs with calibration: stages of sequential calibration of the chosen plan (each
            stage's statistics from the model with the earlier stages compressed; 0 or 1: one-shot).
    """

    name: ClassVar[str] = "prune-uniform"

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return self.run_pruning(model, ctx, uniform_search=True)

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

    Options:
        criterion: auto (obs with --calib, else obspa), magnitude, wanda, obs or obspa.
        units: Unit kinds to prune: channel, head, neuron, head_dim (hidden with include-hidden).
        ratio: Share of units removed per group when no latency budget is given.
        max_ratio: At most this share of any group's units is removed.
        round_to: Kept widths are multiples of this (0: with a budget the target's multiple, see
            targets.width_multiple; without one 1, the ratio as asked).
        levels: Levels per group in the latency search (dense included).
        norm: Norm of the magnitude criterion, l1 or l2.
        normalize: Magnitude: divide each member's scores by their mean before summing.
        min_units: Groups with fewer units are left alone.
        include_hidden: Also prune the hidden (residual) width; approximate (norms change).
        max_iters: Measure-and-correct rounds of the search.
        tolerance: Accept a measured latency within this fraction under the budget.
        safety: Aim this fraction under the budget, against timing noise in the final check.
        max_error: Mean relative error bound (negative: the context's or the default).
        synthetic_feeds: Random input feeds the data-free criterion (obspa) uses.
        synthetic_tokens: For language models, at least this many synthetic tokens in all (more feeds
            of the input shape when it is short).
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

    name: ClassVar[str] = "prune-to-budget"

    levels: int = 8

    def _level_count(self) -> int:
        return self.levels

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        return self.run_pruning(model, ctx, uniform_search=False)

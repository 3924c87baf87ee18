"""Group-level structured pruning of coupled channels, attention heads and FFN neurons (SPA).

Before:  any graph; `channel_groups.analyze` finds every coupled-channel group: conv channels
         with their BN / residual / concat partners, attention heads (Q, K, V rows and O columns;
         with GQA a key/value head with its query group), FFN neurons (up/gate rows, down
         columns), optionally head dimensions and the hidden width.
After:   in every prunable group with at least `min_units` units, the `ratio` share of units with
         the lowest importance is removed from every tensor and constant of the group at once
         (`channel_groups.prune_groups`): weights sliced, Reshape targets, Split sizes, Expand
         shapes, slice bounds and group attributes rewritten, run-time shape chains made to
         follow; kept widths rounded up to a multiple of `round_to` (kept units × unit size).

Importance (`criterion`): "magnitude" sums the per-unit L1/L2 norm over every member of the group
(`passes.importance`). Groups that are frozen (graph inputs/outputs, softmax/reduction axes,
unknown ops, ...) are never touched; their count by reason is in `skipped`.

Requirements: none (data-free). Hidden-width pruning (`include-hidden`) changes what the norms
see and is approximate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import ClassVar

import numpy as np

from spa_compiler.groups.analysis import ALL_UNITS, analyze, prune_groups, round_removal
from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import Pass, PassResult
from spa_compiler.criteria.importance import IMPORTANCE, Importance

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PruneSpaPass(Pass):
    """Remove the least important share of units in every coupled-channel group (any graph).

    Options:
        ratio: Share of units removed in each prunable group, in [0, 1).
        units: Unit kinds pruned: channel, neuron, head, head_dim (and hidden with include-hidden).
        round_to: Kept widths (units x unit size) are rounded up to a multiple of this.
        include_hidden: Also prune the hidden (residual) width; approximate (norms change).
        norm: Norm of the magnitude criterion, l1 or l2.
        criterion: Unit importance: magnitude or magnitude-normalized.
        min_units: Groups with fewer units are left alone.
    """

    name: ClassVar[str] = "prune-spa"

    ratio: float = 0.25
    units: tuple[str, ...] = ("channel", "head", "neuron")
    round_to: int = 1
    include_hidden: bool = False
    norm: str = "l2"
    criterion: str = "magnitude"
    min_units: int = 2

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        del model, ctx
        if not 0.0 <= self.ratio < 1.0:
            raise PreconditionError(f"prune-spa: ratio must be in [0, 1), got {self.ratio}")
        bad = [u for u in self.units if u not in ALL_UNITS]
        if bad:
            raise PreconditionError(
                f"prune-spa: unknown units {bad}", hint=f"use some of {', '.join(ALL_UNITS)}"
            )
        if self.norm not in ("l1", "l2"):
            raise PreconditionError(f"prune-spa: norm must be l1 or l2, got {self.norm!r}")
        if self.criterion not in IMPORTANCE:
            raise PreconditionError(
                f"prune-spa: unknown criterion {self.criterion!r}",
                hint=f"use one of {', '.join(IMPORTANCE)}",
            )
        if self.round_to < 1:
            raise PreconditionError(f"prune-spa: round_to must be >= 1, got {self.round_to}")

    def importance(self) -> Importance:
        """The criterion object (subclasses may return their own)."""
        return IMPORTANCE[self.criterion](self.norm)

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        units = tuple(self.units) + (("hidden",) if self.include_hidden else ())
        analysis = analyze(
            model,
            units=units,
            include_hidden=self.include_hidden,
            input_shapes=ctx.input_shapes or None,
        )
        crit = self.importance()
        skipped: Counter[str] = Counter()
        plan: dict[str, list[int]] = {}
        details = []
        for g in analysis.groups:
            if g.frozen:
                skipped[f"frozen:{(g.reason or '').split(':')[0]}"] += 1
                continue
            if g.unit not in units:
                skipped[f"unit-not-selected:{g.unit}"] += 1
                continue
            if g.n_units < self.min_units:
                skipped["too-few-units"] += 1
                continue
            n_remove = min(g.n_units - 1, int(np.floor(g.n_units * self.ratio)))
            if n_remove <= 0:
                skipped["nothing-to-remove"] += 1
                continue
            scores = crit.scores(model, analysis, g, ctx)
            order = [int(u) for u in np.argsort(scores, kind="stable")]  # least important first
            remove = round_removal(g, order[:n_remove], self.round_to)
            if not remove:
                skipped["rounded-to-nothing"] += 1
                continue
            plan[g.id] = remove
            details.append(
                {
                    "group": g.id,
                    "unit": g.unit,
                    "units": g.n_units,
                    "removed": len(remove),
                    "kept": g.n_units - len(remove),
                    "unit_size": g.unit_size,
                }
            )
        if not plan:
            return PassResult(
                model,
                modified=False,
                stats={"groups_pruned": 0, "coverage": analysis.coverage},
                skipped=dict(skipped),
            )
        stats = prune_groups(model, plan, analysis=analysis, round_to=1, validate=False)
        logger.info(
            "prune-spa: %d groups, %d units removed, params %d -> %d",
            stats["groups_pruned"],
            stats["units_removed"],
            stats["params_before"],
            stats["params_after"],
        )
        return PassResult(
            model,
            modified=True,
            stats={
                "groups_pruned": stats["groups_pruned"],
                "units_removed": stats["units_removed"],
                "params_before": stats["params_before"],
                "params_after": stats["params_after"],
                "coverage": round(analysis.coverage, 4),
            },
            skipped=dict(skipped),
            details=details,
        )

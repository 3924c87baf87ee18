"""Importance criteria for group-level pruning: a score per unit of a `ChannelGroup`.

A criterion sees the whole group: every member (producer rows, biases, norm parameters, consumer
columns) and the model's constants, so it can score a head by all of its Q/K/V rows and O columns
together (DepGraph's group importance). Higher score = more important = kept longer.

    GroupMagnitude(norm="l2"):  s_u = Σ_members ‖W_m[..., idx_m(u), ...]‖₂   (norm over every axis
                                but the member's, positions of unit u pooled)
    GroupMagnitude(norm="l1"):  s_u = Σ_members Σ |W_m[..., idx_m(u), ...]|

The `IMPORTANCE` registry maps criterion names (the pass option `criterion`) to factories; a new
criterion (OBSPA, ZipLM-OBS, Wanda) is one class with a `scores` method and one registry line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from spa_compiler.groups.analysis import ChannelGroup, GroupAnalysis
from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR, constant_value


class Importance(Protocol):
    """Scores the units of a group (higher: more important)."""

    name: str

    def scores(
        self, model: ModelIR, analysis: GroupAnalysis, group: ChannelGroup, ctx: CompileContext
    ) -> npt.NDArray[np.float64]:
        """One score per unit of `group` (length `group.n_units`)."""


def member_values(
    analysis: GroupAnalysis, model: ModelIR, node_index: int, input_index: int
) -> np.ndarray | None:
    """The constant a member reads (None for run-time operands)."""
    nodes = analysis._state.nodes if analysis._state is not None else list(model.graph.nodes)
    c = constant_value(nodes[node_index].inputs[input_index])
    return None if c is None else np.asarray(c.values)


@dataclasses.dataclass(frozen=True)
class GroupMagnitude:
    """Sum over every constant member of the per-unit L1 or L2 norm (DepGraph's group norm).

    Attributes:
        norm: "l1" or "l2".
        normalize: Divide each member's scores by their mean before summing, so a large consumer
            matrix does not drown a small producer (DepGraph's "mean" normalization).
    """

    norm: str = "l2"
    normalize: bool = False
    name: str = "magnitude"

    def scores(
        self, model: ModelIR, analysis: GroupAnalysis, group: ChannelGroup, ctx: CompileContext
    ) -> npt.NDArray[np.float64]:
        del ctx
        total = np.zeros(group.n_units, dtype=np.float64)
        for m in group.members:
            if m.role == "activation":
                continue
            w = member_values(analysis, model, m.node_index, m.input_index)
            if w is None or not np.issubdtype(w.dtype, np.floating):
                continue
            moved = np.moveaxis(np.abs(w.astype(np.float64)), m.axis, 0).reshape(
                w.shape[m.axis], -1
            )
            per_pos = moved.sum(axis=1) if self.norm == "l1" else (moved**2).sum(axis=1)
            valid = m.coords >= 0
            per_unit = np.bincount(m.coords[valid], weights=per_pos[valid], minlength=group.n_units)
            if self.norm == "l2":
                per_unit = np.sqrt(per_unit)
            if self.normalize and per_unit.mean() > 0:
                per_unit = per_unit / per_unit.mean()
            total += per_unit
        return total


#: Criterion name -> factory taking the pass's `norm` option.
IMPORTANCE: dict[str, Callable[[str], Importance]] = {
    "magnitude": lambda norm: GroupMagnitude(norm=norm),
    "magnitude-normalized": lambda norm: GroupMagnitude(norm=norm, normalize=True),
}

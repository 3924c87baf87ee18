"""Group magnitude: the one magnitude score every pass uses.

A unit of a coupled-channel group owns slices of several constants (a head: rows of Q, K, V and
columns of O; a conv channel: a filter, a bias entry, BatchNorm parameters, the next conv's input
columns). Its score is the summed p-th power of every such entry,

    s_u = Σ_members Σ_{i ∈ slice_m(u)} |W_m[i]|^p          (p = 2: the energy the unit carries)

and, with `normalize`, each member's per-unit scores are first divided by their mean, so a large
consumer matrix does not drown a small producer (DepGraph's mean normalization). Removing the
lowest-scored units first, the error of a level is the share of the group's total score removed
(`criteria.paths`), so magnitude errors are comparable across groups like OBS errors are.

Members that read run-time activations (`role == "activation"`, e.g. q in q·kᵀ) hold no weights and
do not count.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.groups.analysis import ChannelGroup
from spa_compiler.ir import ModelIR, constant_value


def norm_power(norm: str | float) -> float:
    """The exponent p of a norm name ("l1" -> 1, "l2" -> 2) or a number."""
    if isinstance(norm, str):
        table = {"l1": 1.0, "l2": 2.0}
        if norm not in table:
            raise ValueError(f"norm must be l1 or l2, got {norm!r}")
        return table[norm]
    p = float(norm)
    if not p > 0:
        raise ValueError(f"norm power must be positive, got {norm}")
    return p


def group_magnitude(
    model: ModelIR,
    group: ChannelGroup,
    *,
    p: float = 2.0,
    normalize: bool = False,
    nodes: Mapping[str, gs.Node] | None = None,
) -> npt.NDArray[np.float64]:
    """One score per unit of `group` (higher: more important), see the module docstring.

    `nodes`: name -> node of `model`, when the caller scores many groups (saves a scan each).
    """
    if nodes is None:
        nodes = {n.name: n for n in model.graph.nodes}
    scores = np.zeros(group.n_units, dtype=np.float64)
    for m in group.members:
        if m.role == "activation":
            continue
        node = nodes.get(m.node)
        if node is None or m.input_index >= len(node.inputs):
            continue
        c = constant_value(node.inputs[m.input_index])
        if c is None:
            continue
        w = np.asarray(c.values)
        if not np.issubdtype(w.dtype, np.floating):
            continue
        moved = np.abs(np.moveaxis(w.astype(np.float64), m.axis, 0)).reshape(w.shape[m.axis], -1)
        per_pos = (moved**p).sum(axis=1)
        valid = m.coords >= 0
        per_unit = np.bincount(m.coords[valid], weights=per_pos[valid], minlength=group.n_units)
        if normalize and per_unit.mean() > 0:
            per_unit = per_unit / per_unit.mean()
        scores += per_unit
    return scores

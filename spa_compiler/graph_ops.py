"""Edit helpers that keep the graph's invariants (no silent corruption of shared constants)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.ir import ModelIR

_counter = itertools.count()


def unique_name(model: ModelIR, base: str) -> str:
    """A tensor/node name not used in the graph yet, derived from `base`."""
    taken = set(model.tensors()) | {n.name for n in model.graph.nodes}
    if base not in taken:
        return base
    while True:
        name = f"{base}__spa{next(_counter)}"
        if name not in taken:
            return name


def slice_constant(
    const: gs.Constant,
    axis: int,
    keep: Sequence[int] | npt.NDArray[np.integer],
    *,
    allowed_users: Iterable[gs.Node],
    model: ModelIR,
) -> gs.Constant:
    """Keep only indices `keep` of `const` along `axis`.

    If the constant has users outside `allowed_users`, those users keep the original and the
    allowed users get a sliced copy (so a shared initializer is never corrupted). Returns the
    constant the allowed users now read.
    """
    allowed = {id(n) for n in allowed_users}
    keep = np.asarray(keep, dtype=np.int64)
    values = np.take(np.asarray(const.values), keep, axis=axis)
    others = [n for n in const.outputs if id(n) not in allowed]
    if not others:
        const.values = values
        return const
    copy = gs.Constant(unique_name(model, const.name + "_pruned"), values)
    for node in list(const.outputs):
        if id(node) in allowed:
            for i, t in enumerate(node.inputs):
                if t is const:
                    node.inputs[i] = copy
    return copy



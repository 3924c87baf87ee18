"""Graph cleanup: drop Identity nodes and dead code, sort topologically, optionally fold constants.

Before:  X -> Identity -> Relu -> Y,  plus nodes whose outputs nobody reads
After:   X -> Relu -> Y

Exact: outputs are bit-identical. Identity nodes that produce a graph output are kept (the
output name is part of the model's interface).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

from spa_compiler.context import CompileContext
from spa_compiler.ir import ModelIR
from spa_compiler.pass_base import Pass, PassResult

logger = logging.getLogger(__name__)


def remove_identities(model: ModelIR) -> int:
    """Bypass every Identity node whose output is not a graph output; returns how many."""
    removed = 0
    outputs = {id(t) for t in model.graph.outputs}
    for node in list(model.graph.nodes):
        if node.op != "Identity" or not node.inputs or not node.outputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in outputs:
            continue
        for consumer in list(dst.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is dst:
                    consumer.inputs[i] = src
        node.outputs.clear()
        node.inputs.clear()
        removed += 1
    return removed


@dataclasses.dataclass(frozen=True)
class CleanupPass(Pass):
    """Remove Identity nodes and dead code, then sort the graph topologically.

    Options:
        fold_constants: Also fold subgraphs whose inputs are all constant (uses ONNX Runtime).
    """

    name: ClassVar[str] = "cleanup"

    fold_constants: bool = False

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        del ctx
        before = len(model.graph.nodes)
        identities = remove_identities(model)
        if self.fold_constants:
            model.graph.fold_constants()
        model.cleanup()
        removed = before - len(model.graph.nodes)
        logger.info("cleanup: %d nodes removed (%d Identity)", removed, identities)
        return PassResult(
            model,
            modified=removed > 0,
            stats={"nodes_removed": removed, "identities_removed": identities},
        )

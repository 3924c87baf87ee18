"""Uniform magnitude pruning of channels whose coupling is simple and provable.

Before:  A = Conv(X, Wa, ba)  [-> BatchNormalization]  [-> Relu/Clip/LeakyRelu/Sigmoid/...]  -> Conv(., Wb, bb)
         Wa: (C, Cin, kh, kw), Wb: (Cout, C, kh', kw')
After:   the same chain with C' = C - removed channels: Wa[keep], ba[keep], BN params[keep],
         Wb[:, keep]. Also Gemm(transB=1) chains (Wa: (C, K)) into a Gemm or a Conv.

Only chains where every intermediate tensor has exactly one reader and is not a graph output are
touched (the coupled-channel analysis generalizes this). Channels with the smallest L1/L2 norm of
their producer filter are removed, the same share in every chain; kept widths rounded up to a
multiple of `round_to`. Everything else is left alone and counted in `skipped` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from spa_compiler.context import CompileContext
from spa_compiler.errors import PreconditionError
from spa_compiler.graph_ops import slice_constant
from spa_compiler.ir import ModelIR, constant_value
from spa_compiler.pass_base import Pass, PassResult

logger = logging.getLogger(__name__)

#: Elementwise ops with one data input that act per element (a channel maps to itself).
UNARY_PASS_THROUGH = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
     "Softplus", "Gelu", "Mish", "Celu", "Erf", "Abs", "Neg", "Identity"}
)


@dataclasses.dataclass
class _Chain:
    producer: gs.Node
    weight: gs.Constant
    bias: gs.Constant | None
    middle: list[gs.Node]
    consumer: gs.Node
    channels: int


def _producer_weights(node: gs.Node) -> tuple[gs.Constant | None, gs.Constant | None, str | None]:
    if node.op == "Conv":
        if node.attrs.get("group", 1) != 1:
            return None, None, "producer-grouped-conv"
    elif node.op == "Gemm":
        if not node.attrs.get("transB", 0) or node.attrs.get("transA", 0):
            return None, None, "producer-gemm-layout"
    else:
        return None, None, None
    w = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None, None, "weight-not-constant"
    if not _exclusive(node.inputs[1]):
        return None, None, "weight-from-shared-constant-node"
    b = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if len(node.inputs) > 2 and node.inputs[2].name and b is None:
        return None, None, "bias-not-constant"
    return w, b, None


def _exclusive(t: gs.Tensor) -> bool:
    """An initializer (copied on demand when shared) or a Constant-node output read once."""
    return isinstance(t, gs.Constant) or len(t.outputs) == 1


def _find_chain(model: ModelIR, node: gs.Node) -> tuple[_Chain | None, str | None]:
    w, b, why = _producer_weights(node)
    if w is None:
        return None, why
    middle: list[gs.Node] = []
    t = node.outputs[0]
    while True:
        if model.is_graph_output(t):
            return None, "feeds-graph-output"
        if len(t.outputs) != 1:
            return None, "multiple-consumers"
        nxt = t.outputs[0]
        if nxt.op == "BatchNormalization" and nxt.inputs[0] is t and len(nxt.outputs) == 1:
            if any(constant_value(x) is None or not _exclusive(x) for x in nxt.inputs[1:5]):
                return None, "batchnorm-params-not-constant"
            middle.append(nxt)
        elif nxt.op in UNARY_PASS_THROUGH and nxt.inputs[0] is t:
            if nxt.op == "Clip" and any(
                x.name and constant_value(x) is None for x in nxt.inputs[1:]
            ):
                return None, "clip-bounds-not-constant"
            middle.append(nxt)
        elif nxt.op in ("Conv", "Gemm") and nxt.inputs[0] is t:
            cw = constant_value(nxt.inputs[1]) if len(nxt.inputs) > 1 else None
            if cw is None:
                return None, "consumer-weight-not-constant"
            if not _exclusive(nxt.inputs[1]):
                return None, "weight-from-shared-constant-node"
            if nxt.op == "Conv" and nxt.attrs.get("group", 1) != 1:
                return None, "consumer-grouped-conv"
            if nxt.op == "Gemm" and nxt.attrs.get("transA", 0):
                return None, "consumer-gemm-layout"
            if (node.op == "Gemm") != (nxt.op == "Gemm"):
                return None, f"layout-change:{node.op}->{nxt.op}"
            return _Chain(node, w, b, middle, nxt, int(w.shape[0])), None
        else:
            return None, f"consumer-op:{nxt.op}"
        t = nxt.outputs[0]


def channel_scores(weight: np.ndarray, norm: str) -> np.ndarray:
    """Per output channel (axis 0) L1 or L2 norm of the producer weight."""
    flat = np.abs(weight.reshape(weight.shape[0], -1).astype(np.float64))
    return flat.sum(axis=1) if norm == "l1" else np.sqrt((flat**2).sum(axis=1))


def kept_count(channels: int, ratio: float, round_to: int) -> int:
    """Channels kept when removing `ratio` of `channels`, rounded up to a multiple of `round_to`."""
    keep = int(np.ceil(channels * (1.0 - ratio)))
    keep = max(1, int(np.ceil(keep / round_to)) * round_to) if round_to > 1 else max(1, keep)
    return min(channels, keep)


@dataclasses.dataclass(frozen=True)
class PruneMagnitudePass(Pass):
    """Remove the same share of the smallest-norm channels in every simple Conv/Gemm chain.

    Options:
        ratio: Share of channels removed in each chain, in [0, 1).
        norm: Channel score, l1 or l2 norm of the producer's filter.
        round_to: Kept widths are rounded up to a multiple of this.
        min_channels: Chains narrower than this are left alone.
    """

    name: ClassVar[str] = "prune-magnitude"

    ratio: float = 0.25
    norm: str = "l2"
    round_to: int = 1
    min_channels: int = 4

    def check_preconditions(self, model: ModelIR, ctx: CompileContext) -> None:
        del model, ctx
        if not 0.0 <= self.ratio < 1.0:
            raise PreconditionError(f"prune-magnitude: ratio must be in [0, 1), got {self.ratio}")
        if self.norm not in ("l1", "l2"):
            raise PreconditionError(f"prune-magnitude: norm must be l1 or l2, got {self.norm!r}")
        if self.round_to < 1:
            raise PreconditionError(f"prune-magnitude: round_to must be >= 1, got {self.round_to}")

    def run(self, model: ModelIR, ctx: CompileContext) -> PassResult:
        del ctx
        skipped: Counter[str] = Counter()
        details = []
        removed_total = 0
        chains = 0
        # Decide every chain on the unmodified weights first, so the result does not depend on
        # the order chains are visited in; then rewrite.
        plan: list[tuple[_Chain, np.ndarray]] = []
        for node in model.nodes(("Conv", "Gemm")):
            chain, why = _find_chain(model, node)
            if chain is None:
                if why:
                    skipped[why] += 1
                continue
            if chain.channels < self.min_channels:
                skipped["too-narrow"] += 1
                continue
            keep_n = kept_count(chain.channels, self.ratio, self.round_to)
            if keep_n >= chain.channels:
                skipped["nothing-to-remove"] += 1
                continue
            scores = channel_scores(np.asarray(chain.weight.values), self.norm)
            plan.append((chain, np.sort(np.argsort(-scores, kind="stable")[:keep_n])))
        for chain, keep in plan:
            self._rewrite(model, chain, keep)
            chains += 1
            removed_total += chain.channels - len(keep)
            details.append(
                {"producer": chain.producer.name, "consumer": chain.consumer.name,
                 "channels": chain.channels, "kept": len(keep)}
            )
            logger.debug("prune-magnitude %s: %d -> %d", chain.producer.name, chain.channels, len(keep))
        return PassResult(
            model,
            modified=chains > 0,
            stats={"chains_pruned": chains, "channels_removed": removed_total},
            skipped=dict(skipped),
            details=details,
        )

    @staticmethod
    def _rewrite(model: ModelIR, chain: _Chain, keep: np.ndarray) -> None:
        # constants are resolved again from the nodes: an earlier rewrite may have given a node
        # its own copy of a shared initializer
        p = chain.producer
        w = constant_value(p.inputs[1])
        assert w is not None  # checked in _find_chain
        slice_constant(w, 0, keep, allowed_users=[p], model=model)
        if chain.bias is not None:
            b = constant_value(p.inputs[2])
            assert b is not None
            slice_constant(b, 0, keep, allowed_users=[p], model=model)
        for m in chain.middle:
            if m.op == "BatchNormalization":
                for x in m.inputs[1:5]:
                    c = constant_value(x)
                    assert c is not None  # checked in _find_chain
                    slice_constant(c, 0, keep, allowed_users=[m], model=model)
        cons = chain.consumer
        cw = constant_value(cons.inputs[1])
        assert cw is not None
        axis = 1
        if cons.op == "Gemm" and not cons.attrs.get("transB", 0):
            axis = 0
        slice_constant(cw, axis, keep, allowed_users=[cons], model=model)
        # intermediate shapes are stale now; let shape inference recompute them
        for n in [p, *chain.middle]:
            for t in n.outputs:
                t.shape = None

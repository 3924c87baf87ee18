"""Recognising Monarch products a model already holds (Monarch-trained models) and fusing them.

Monarch-trained models (HazyResearch's `blockdiag_butterfly_multiply` and its ports) export each
Monarch linear as two batched MatMuls with data movement around them:

    X (..., K) -Reshape/Transpose...-> (bi, B, kb) -MatMul W1 (bi, kb, c)-> (bi, B, c)
       -Reshape/Transpose...-> (bo, B, d) -MatMul W2 (bo, d, nq)-> (bo, B, nq) -Reshape/Transpose...-> Y (..., N)

(W1 and W2 constant, possibly behind a Transpose; the Reshape targets may be computed from X's
shape). The exact permutation between and around the two products differs between
implementations and versions, so it is not read from the pattern: the chain is recognised by its
shape (only Reshape/Transpose between the products and around them, each intermediate read once,
two constant 3-D weights) and then *probed*: the subgraph from X to Y is run on the rows of the
identity, which yields the dense M (N, K) the chain computes (the chain is linear). M is projected
onto the Monarch family with the block counts the weights' shapes imply (bi = W1.shape[0], bo =
W2.shape[0], r = W1.shape[2] / bo); if the projection reproduces M to fp32 precision the chain
is replaced by one `MonarchMatMul` (or the standard-ONNX form), otherwise it is left alone with a
reason. Recognition is therefore lossless by measurement, whatever the exporter's layout.

Not recognised: a single block-diagonal product (one batched MatMul) is not a Monarch product in
the op's convention at the same cost, so it is left alone (reason `single-blockdiag`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.ir import ModelIR, constant_value
from spa_compiler.monarch import factor

logger = logging.getLogger(__name__)

_MOVES = ("Reshape", "Transpose")
#: Relative Frobenius residual under which a probed chain counts as exactly Monarch (fp32 products).
EXACT_TOL = 1e-5


@dataclasses.dataclass
class Chain:
    """A recognised Monarch chain X -> Y."""

    x: gs.Tensor
    y: gs.Tensor
    nodes: list[gs.Node]
    w1: npt.NDArray[np.generic]
    w2: npt.NDArray[np.generic]


def _weight3(model: ModelIR, node: gs.Node) -> npt.NDArray[np.generic] | None:
    """The 3-D constant right operand of a MatMul in x @ W layout (a Transpose(0,2,1) of one too)."""
    if node.op != "MatMul" or len(node.inputs) != 2:
        return None
    t = node.inputs[1]
    c = constant_value(t)
    if c is not None:
        return c.values if c.values.ndim == 3 else None
    prod = model.producer(t)
    if prod is not None and prod.op == "Transpose" and list(prod.attrs.get("perm", [])) == [0, 2, 1]:
        c = constant_value(prod.inputs[0])
        if c is not None and c.values.ndim == 3:
            return np.swapaxes(c.values, 1, 2)
    return None


def _single_reader(t: gs.Tensor, model: ModelIR) -> gs.Node | None:
    if len(t.outputs) != 1 or model.is_graph_output(t):
        return None
    return t.outputs[0]


def find_chains(model: ModelIR) -> tuple[list[Chain], Counter[str]]:
    """Candidate chains (not yet probed) and skip reasons for batched MatMuls that are not one."""
    chains: list[Chain] = []
    skipped: Counter[str] = Counter()
    used: set[str] = set()
    for m1 in model.graph.nodes:
        w1 = _weight3(model, m1)
        if w1 is None or m1.name in used:
            continue
        # downstream to the second product through data movement only
        nodes = [m1]
        t = m1.outputs[0]
        nxt = _single_reader(t, model)
        while nxt is not None and nxt.op in _MOVES:
            nodes.append(nxt)
            t = nxt.outputs[0]
            nxt = _single_reader(t, model)
        w2 = _weight3(model, nxt) if nxt is not None else None
        if nxt is None or w2 is None:
            if any(_weight3(model, p) is not None for p in _upstream_products(model, m1)):
                continue  # m1 is the second product of a chain found from its first
            skipped["single-blockdiag"] += 1
            continue
        nodes.append(nxt)
        y = nxt.outputs[0]
        nxt2 = _single_reader(y, model)
        while nxt2 is not None and nxt2.op in _MOVES:
            nodes.append(nxt2)
            y = nxt2.outputs[0]
            nxt2 = _single_reader(y, model)
        # upstream to the chain's input
        x = m1.inputs[0]
        prod = model.producer(x)
        while prod is not None and prod.op in _MOVES and _single_reader(x, model) is not None:
            nodes.insert(0, prod)
            x = prod.inputs[0]
            prod = model.producer(x)
        used.update(n.name for n in nodes)
        chains.append(Chain(x, y, nodes, w1, w2))
    return chains, skipped


def _upstream_products(model: ModelIR, node: gs.Node) -> list[gs.Node]:
    out = []
    prod = model.producer(node.inputs[0])
    while prod is not None and prod.op in _MOVES:
        prod = model.producer(prod.inputs[0])
    if prod is not None and prod.op == "MatMul":
        out.append(prod)
    return out


def probe(model: ModelIR, chain: Chain) -> npt.NDArray[np.float64] | str:
    """The dense M (N, K) the chain computes, from runs on identity rows; or why it cannot be probed."""
    from spa_compiler.ort import run

    k = int(chain.w1.shape[0] * chain.w1.shape[1])
    n = int(chain.w2.shape[0] * chain.w2.shape[2])
    shape = list(chain.x.shape) if chain.x.shape else [1, k]  # unknown rank: try (rows, K)
    if isinstance(shape[-1], int) and shape[-1] not in (k, -1):
        return "input-width-mismatch"
    lead = [d if isinstance(d, int) and d > 0 else 1 for d in shape[:-1]] or [1]
    rows = int(np.prod(lead))
    sub = model.clone()
    tensors = sub.tensors()
    x, y = tensors[chain.x.name], tensors[chain.y.name]
    x.inputs.clear()
    x.shape, x.dtype = [*lead, k], chain.w1.dtype
    y.shape, y.dtype = None, chain.w1.dtype
    sub.graph.inputs, sub.graph.outputs = [x], [y]
    sub.graph.cleanup(remove_unused_graph_inputs=True)
    for node in sub.graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Variable) and not t.inputs and t is not x and t.name:
                return "depends-on-other-inputs"
    eye = np.eye(k, dtype=chain.w1.dtype)
    cols = []
    try:
        for start in range(0, k, rows):
            block = np.zeros((rows, k), dtype=chain.w1.dtype)
            part = eye[start:start + rows]
            block[: len(part)] = part
            (out,) = run(sub, {x.name: block.reshape(*lead, k)}, optimize=False)
            cols.append(np.asarray(out, dtype=np.float64).reshape(rows, -1)[: len(part)])
    except Exception as e:  # noqa: BLE001 - any failure means: not probeable, leave it alone
        logger.debug("monarch probe of %s failed: %s", chain.y.name, e)
        return "probe-failed"
    mt = np.concatenate(cols, axis=0)  # (K, N): row i = M[:, i]
    if mt.shape != (k, n):
        return "output-width-mismatch"
    return mt.T


def structure_of(chain: Chain, m: npt.NDArray[np.float64]) -> tuple[factor.MonarchShape, np.ndarray, np.ndarray] | str:
    """(shape, R, L) reproducing M exactly, from the block counts the weights imply; or why not."""
    bi, _, c = chain.w1.shape
    bo = chain.w2.shape[0]
    n, k = m.shape
    r = max(1, c // bo) if c % bo == 0 else -(-c // bo)
    why = factor.shape_error(n, k, bi, bo, r)
    if why:
        return f"blocks-do-not-fit: {why}"
    rf, lf = factor.project(m, bi, bo, r)
    resid = np.linalg.norm(m - factor.dense_weight(rf, lf)) / max(np.linalg.norm(m), 1e-300)
    if resid > EXACT_TOL:
        return "not-monarch-in-op-convention"
    return factor.MonarchShape(n, k, bi, bo, r), rf, lf

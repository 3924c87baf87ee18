"""The op form of N:M sites: `NMSparseMatMul` (domain spa.ops, version 1) with compressed weights.

runtime_ops/nm_sparse_matmul/README.md defines the op: ``Y = X @ W^T (+ bias)`` for a 2:4-sparse
``W: (N, K)`` stored as ``values: (N, K/2)`` (the kept entries of every group of 4, in column order)
and ``meta: (N, K/8)`` uint8 (one 4-bit code ``i0 | i1 << 2`` per group, two groups per byte, low
nibble first); K must be a multiple of 8. The op package's `reference.compress` is the source of
truth for the format and is what encodes here.

Rewrites (the weight already carries the 2:4 pattern, `NMMethod.apply`):

    MatMul(X, W)            W: (K, N)   ->  NMSparseMatMul(X, values(W^T), meta(W^T))
    Gemm(A, B[, C])         transA=0, alpha=beta=1, C absent or (N,):
                            transB=1: W = B; transB=0: W = B^T  ->  NMSparseMatMul(A, values, meta[, C])

Sites the op does not cover keep the dense form with the reason: a weight on the left of a MatMul,
Conv, a pattern other than 2:4, K not a multiple of 8, a Gemm with transA / alpha / beta / a 2-D C,
a target without custom-op kernels, or the op package not installed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa_compiler.ir import ModelIR, constant_value
from spa_compiler.methods.nm import NMMethod

logger = logging.getLogger(__name__)

OP_TYPE = "NMSparseMatMul"
OP_PACKAGE = "spa_compiler.runtime_ops.nm_sparse_matmul"


def op_package() -> tuple[Any, str | None]:
    """(the op package's reference module and its domain, None) or (None, why it is unavailable)."""
    try:
        ref = importlib.import_module(f"{OP_PACKAGE}.reference")
        rt = importlib.import_module("spa_compiler.runtime_ops")
    except ImportError as e:
        return None, f"op-package-missing ({e.name or e})"
    domain = getattr(rt, "DOMAIN", None)
    if domain is None or not hasattr(ref, "compress"):
        return None, "op-package-incomplete"
    return (ref, domain), None


def _why_not(method: NMMethod, sid: str, pattern: str) -> str | None:
    v = method.views[sid]
    if pattern != "2:4":
        return f"pattern-{pattern}"
    if v.op == "Conv" or v.layout == "left":
        return f"layout-{v.layout}"
    if v.reduction % 8:
        return "K-not-multiple-of-8"
    if v.op == "Gemm":
        attrs = v.node.attrs
        if int(attrs.get("transA", 0)) or float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
            return "gemm-attributes"
        if len(v.node.inputs) > 2 and v.node.inputs[2].name:
            c = constant_value(v.node.inputs[2])
            if c is None or np.asarray(c.values).shape != (v.channels_out,):
                return "gemm-bias-shape"
    return None


def emit_ops(model: ModelIR, method: NMMethod, plan: Mapping[str, Any], target: str) -> tuple[list[str], dict[str, str]]:
    """Rewrite the planned sites of `model` to NMSparseMatMul where possible.

    Returns:
        (site ids emitted, {site id: why it kept the dense form}).
    """
    from spa_compiler.targets import get_target

    sids = [sid for sid, v in plan.items() if str(v) != "dense"]
    if "custom-ops" not in get_target(target).capabilities:
        return [], {sid: f"target-{target}-has-no-custom-ops" for sid in sids}
    pkg, why = op_package()
    if pkg is None:
        return [], {sid: str(why) for sid in sids}
    ref, domain = pkg
    tensors = model.tensors()
    nodes = {n.name: n for n in model.graph.nodes}
    emitted: list[str] = []
    reasons: dict[str, str] = {}
    for sid in sids:
        why = _why_not(method, sid, str(plan[sid]))
        view = method.views[sid]
        node = nodes.get(view.node.name) if view.node.name else None
        if why is None and node is None:
            why = "node-not-found"
        if why is not None:
            reasons[sid] = why
            continue
        assert node is not None
        const = constant_value(tensors[sid])
        assert const is not None
        w = np.asarray(const.values)
        w_nk = w.T if view.layout == "right" else w
        values, meta = ref.compress(np.ascontiguousarray(w_nk))
        base = sid.replace("/", "_")
        inputs = [node.inputs[0],
                  gs.Constant(f"{base}__nm_values", np.ascontiguousarray(values)),
                  gs.Constant(f"{base}__nm_meta", np.ascontiguousarray(meta, dtype=np.uint8))]
        if view.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
            inputs.append(node.inputs[2])
        new = gs.Node(OP_TYPE, name=f"{node.name}__nm", domain=domain, inputs=inputs, outputs=list(node.outputs))
        node.outputs.clear()
        node.inputs.clear()
        model.graph.nodes.append(new)
        emitted.append(sid)
    if emitted:
        _import_domain(model, domain)
        model.cleanup()
    return emitted, reasons


def _import_domain(model: ModelIR, domain: str) -> None:
    g = model.graph
    imports = g.import_domains
    if imports is None:
        g.import_domains = [onnx.helper.make_opsetid("", model.opset), onnx.helper.make_opsetid(domain, 1)]
        return
    if not any(i.domain == domain for i in imports):
        imports.append(onnx.helper.make_opsetid(domain, 1))

"""Linear layers as Monarch sites, and Monarch factors written back into the graph.

A *linear site* is a MatMul or Gemm with one constant 2-D weight, read as M (N, K) with
Y = X @ M.T (+ bias), X (..., K):

    MatMul(X, W)                 W (K, N) constant            M = W.T
    Gemm(X, B, C?)               transA=0, alpha=1, beta=1    M = B.T (transB=0) or B (transB=1)

Anything else is not a site, with a reason (`site_of` returns it): a non-constant weight, a weight
shared by several nodes (re-factoring it for one reader changes the others), a batched (3-D+)
weight, a constant on the left of the product, a transposed or scaled Gemm, a non-float weight.

Emission replaces the node by one of two forms computing Y = X @ M.T from the factors R (bi, bo*r,
kb) and L (bo, nq, bi*r) (`spa_compiler.monarch.factor`):

    "onnx" (standard ops, runs everywhere):
      X (..., K) -Reshape-> (B, bi, kb) -Transpose(1,0,2)-> (bi, B, kb)
        -MatMul R^T (bi, kb, bo*r)-> (bi, B, bo*r) -Reshape-> (bi, B, bo, r)
        -Transpose(2,1,0,3)-> (bo, B, bi, r) -Reshape-> (bo, B, bi*r)
        -MatMul L^T (bo, bi*r, nq)-> (bo, B, nq) -Transpose(1,2,0)-> (B, nq, bo) -Reshape-> (..., N)
      (the factors are stored pre-transposed, so no Transpose runs on weights; Y's leading shape is
      X's, taken with Shape/Slice/Concat, so any batch shape works)
    "custom-op": one `spa.ops` MonarchMatMul(X, R, L[, bias]) node (the runtime_ops op, whose
      reference.py defines the same convention with bi == bo); only for bi == bo.

A Gemm's bias C becomes an Add after the Monarch form (the op's own bias input when C is 1-D).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.ir import ModelIR, constant_value

DOMAIN = "spa.ops"
OP_TYPE = "MonarchMatMul"
FORMS = ("onnx", "custom-op")
_FLOAT = (np.float32, np.float16, np.float64)
_names = itertools.count()


@dataclasses.dataclass(frozen=True)
class LinearSite:
    """One MatMul/Gemm with a constant 2-D weight.

    Attributes:
        node: The node's name.
        weight: The weight constant's name.
        n: Output width N.
        k: Input width K.
        transposed: Whether the stored weight is already M (N, K) (Gemm transB=1) rather than M.T.
        bias: The Gemm's C constant name, if any.
    """

    node: str
    weight: str
    n: int
    k: int
    transposed: bool
    bias: str | None = None

    def matrix(self, model: ModelIR) -> npt.NDArray[np.float64]:
        """M (N, K) in float64."""
        w = np.asarray(model.tensors()[self.weight].values, dtype=np.float64)
        return w if self.transposed else w.T


def site_of(model: ModelIR, node: gs.Node) -> LinearSite | str:
    """The node as a linear site, or why it is not one (a short reason key)."""
    if node.op not in ("MatMul", "Gemm"):
        return "not-matmul"
    if len(node.inputs) < 2 or not node.outputs:
        return "malformed"
    if constant_value(node.inputs[0]) is not None and constant_value(node.inputs[1]) is None:
        return "weight-on-left"
    const = constant_value(node.inputs[1])
    if const is None:
        return "weight-not-constant"
    w = const.values
    if w.ndim != 2:
        return "batched-weight" if w.ndim > 2 else "weight-not-matrix"
    if w.dtype.type not in _FLOAT:
        return "weight-not-float"
    if len(node.inputs[1].outputs) != 1 or model.is_graph_output(node.inputs[1]):
        return "shared-weight"
    bias = None
    transposed = False
    if node.op == "Gemm":
        a = node.attrs
        if int(a.get("transA", 0)) or float(a.get("alpha", 1.0)) != 1.0:
            return "gemm-transA-or-alpha"
        transposed = bool(int(a.get("transB", 0)))
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = constant_value(node.inputs[2])
            if c is None or float(a.get("beta", 1.0)) != 1.0:
                return "gemm-bias-not-constant"
            bias = c.name
    k, n = (w.shape[1], w.shape[0]) if transposed else w.shape
    return LinearSite(node.name, const.name, int(n), int(k), transposed, bias)


def _const(name: str, arr: npt.ArrayLike) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(arr))


def emit(
    model: ModelIR,
    site: LinearSite,
    r_factor: npt.NDArray[np.floating],
    l_factor: npt.NDArray[np.floating],
    *,
    form: str = "onnx",
    nodes: Mapping[str, gs.Node] | None = None,
) -> list[gs.Node]:
    """Replace the site's node by the Monarch `form` (see the module docstring); returns the new nodes.

    The factors are cast to the weight's dtype. The old node is disconnected; `model.cleanup()`
    removes it and its weight.
    """
    table = nodes if nodes is not None else {n.name: n for n in model.graph.nodes}
    node = table[site.node]
    tensors = model.tensors()
    dtype = tensors[site.weight].values.dtype
    x, y = node.inputs[0], node.outputs[0]
    bias = tensors[site.bias] if site.bias else None
    node.outputs.clear()  # the old node is now dead; cleanup() drops it
    return emit_between(model, x, y, r_factor, l_factor, form=form, dtype=dtype, bias=bias,
                        prefix=site.node or y.name)


def emit_between(
    model: ModelIR,
    x: gs.Tensor,
    y: gs.Tensor,
    r_factor: npt.NDArray[np.floating],
    l_factor: npt.NDArray[np.floating],
    *,
    form: str,
    dtype: npt.DTypeLike,
    bias: gs.Tensor | None = None,
    prefix: str = "",
) -> list[gs.Node]:
    """Nodes computing y = x @ M.T (+ bias) from the factors, added to the graph; `y` must have no
    producer (the caller disconnected it)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    bi, bor, kb = r_factor.shape
    bo, nq, _ = l_factor.shape
    r = bor // bo
    if form == "custom-op" and bi != bo:
        raise ValueError(f"{prefix}: MonarchMatMul takes one block count, got bi={bi}, bo={bo}")
    p = f"{prefix or y.name}/monarch{next(_names)}"
    new: list[gs.Node] = []
    out = y
    if bias is not None and not (form == "custom-op" and bias.values.ndim == 1):
        out = gs.Variable(f"{p}/y_nobias", dtype=y.dtype)  # the bias is an Add after the product
    if form == "custom-op":
        inputs = [x, _const(f"{p}/R", r_factor.astype(dtype)), _const(f"{p}/L", l_factor.astype(dtype))]
        if bias is not None and out is y:
            inputs.append(bias)
        new.append(gs.Node(OP_TYPE, f"{p}/op", inputs=inputs, outputs=[out], domain=DOMAIN))
    else:
        v = lambda tag: gs.Variable(f"{p}/{tag}", dtype=y.dtype)  # noqa: E731
        i64 = lambda tag, vals: _const(f"{p}/{tag}", np.asarray(vals, dtype=np.int64))  # noqa: E731
        rt = _const(f"{p}/Rt", r_factor.transpose(0, 2, 1).astype(dtype))  # (bi, kb, bo*r)
        lt = _const(f"{p}/Lt", l_factor.transpose(0, 2, 1).astype(dtype))  # (bo, bi*r, nq)
        x3, xt, u, u4, ut, vv, w, wt = (v(t) for t in ("x3", "xt", "u", "u4", "ut", "v", "w", "wt"))
        xs, lead, ys = (gs.Variable(f"{p}/{t}", dtype=np.int64) for t in ("xshape", "lead", "yshape"))
        new += [
            gs.Node("Reshape", f"{p}/reshape_x", inputs=[x, i64("s1", [-1, bi, kb])], outputs=[x3]),
            gs.Node("Transpose", f"{p}/transpose_x", attrs={"perm": [1, 0, 2]}, inputs=[x3], outputs=[xt]),
            gs.Node("MatMul", f"{p}/stage1", inputs=[xt, rt], outputs=[u]),
            gs.Node("Reshape", f"{p}/reshape_u", inputs=[u, i64("s2", [bi, -1, bo, r])], outputs=[u4]),
            gs.Node("Transpose", f"{p}/permute", attrs={"perm": [2, 1, 0, 3]}, inputs=[u4], outputs=[ut]),
            gs.Node("Reshape", f"{p}/reshape_v", inputs=[ut, i64("s3", [bo, -1, bi * r])], outputs=[vv]),
            gs.Node("MatMul", f"{p}/stage2", inputs=[vv, lt], outputs=[w]),
            gs.Node("Transpose", f"{p}/transpose_y", attrs={"perm": [1, 2, 0]}, inputs=[w], outputs=[wt]),
            gs.Node("Shape", f"{p}/shape_x", inputs=[x], outputs=[xs]),
            gs.Node("Slice", f"{p}/lead_dims", inputs=[xs, i64("zero", [0]), i64("minus1", [-1])], outputs=[lead]),
            gs.Node("Concat", f"{p}/y_shape", attrs={"axis": 0}, inputs=[lead, i64("n", [nq * bo])], outputs=[ys]),
            gs.Node("Reshape", f"{p}/reshape_y", inputs=[wt, ys], outputs=[out]),
        ]
    if out is not y:
        assert bias is not None
        new.append(gs.Node("Add", f"{p}/bias", inputs=[out, bias], outputs=[y]))
    model.graph.nodes.extend(new)
    return new


def custom_op_available() -> tuple[bool, str]:
    """Whether the `MonarchMatMul` op package (runtime_ops) is importable, and why not."""
    import importlib.util

    try:
        found = importlib.util.find_spec("spa_compiler.runtime_ops.monarch_matmul") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return False, "the runtime_ops MonarchMatMul package is not installed in this build"
    import os

    if not os.environ.get("SPA_ORT_CUSTOM_OPS"):  # the kernel library must exist to run (and time) it
        try:
            from spa_compiler import runtime_ops

            runtime_ops.ort_library_path()  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - not built (MissingRequirementError) or an older package
            return False, f"the MonarchMatMul kernel library is not built ({str(e).splitlines()[0]})"
    return True, ""


def custom_op_library() -> str | None:
    """The ORT custom-op library path when the op package is importable and built, else None."""
    ok, _ = custom_op_available()
    if not ok:
        return None
    try:
        from spa_compiler import runtime_ops

        return str(runtime_ops.ort_library_path())  # type: ignore[attr-defined]
    except Exception:  # not built, or an older runtime_ops without the function
        return None

"""Evaluation of run-time shape arithmetic, and editing of shape-carrying constants.

Exporters compute reshape targets, slice bounds and expand shapes in two ways:

* TorchScript: at run time, `Shape(x) → Gather(i) → Unsqueeze → Concat(…, const heads, const dim)`;
* dynamo: mostly constants, with `Shape(x, start, end)` pieces for the dynamic dims.

`ShapeEvaluator` evaluates such int-valued subgraphs for a given assignment of axis sizes (a
`Shape` node reads the sizes the caller supplies), so analysis can check whether a run-time chain
tracks pruning by itself (it does for `x.shape[-1] // 2`), and `editable` / `rebuild` find the
constant element an output element comes from and write a private edited copy of the chain
(shared chains, e.g. one Concat feeding the q, k and v reshapes, are never edited in place).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import onnx_graphsurgeon as gs

from spa_compiler.ir import ModelIR, constant_array

#: Largest tensor the evaluator treats as shape arithmetic.
MAX_ELEMENTS = 64

#: Ops through which an output element is a copy of one input element (editable paths).
COPY_OPS = frozenset({"Concat", "Unsqueeze", "Squeeze", "Identity", "Cast", "Reshape"})


class _NotEvaluable(Exception):
    pass


def _attr(node: gs.Node, name: str, default: object = None) -> object:
    return node.attrs.get(name, default)


def _axes(node: gs.Node, inputs: list, attr: str = "axes", index: int = 1) -> list[int] | None:
    if len(node.inputs) > index and node.inputs[index].name:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    a = _attr(node, attr)
    return None if a is None else [int(x) for x in a]  # type: ignore[union-attr]


class ShapeEvaluator:
    """Evaluates small int (and float scalar) subgraphs with caller-supplied axis sizes.

    Args:
        sizes_of: tensor -> its axis sizes under the current assignment (used by Shape/Size).
    """

    def __init__(self, sizes_of: Callable[[gs.Tensor], Sequence[int] | None]) -> None:
        self._sizes_of = sizes_of
        self._memo: dict[int, npt.NDArray[np.generic] | None] = {}

    def memo_by_name(self, tensors: Mapping[str, gs.Tensor]) -> dict[str, npt.NDArray[np.generic] | None]:
        """The values evaluated so far, keyed by tensor name (`tensors`: name -> tensor of the
        graph they were evaluated on; values of tensors not in it are left out)."""
        name_of = {id(t): name for name, t in tensors.items() if name}
        return {name_of[k]: v for k, v in self._memo.items() if k in name_of}

    def seed(self, t: gs.Tensor, value: npt.NDArray[np.generic] | None) -> None:
        """Record `value` as the value of `t` (as if evaluated), e.g. one known from a copy."""
        self._memo[id(t)] = value

    def value(self, t: gs.Tensor) -> npt.NDArray[np.generic] | None:
        """The value of `t`, or None if it is not small shape arithmetic."""
        key = id(t)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None  # cycle guard
        try:
            sizes = None if constant_array(t) is not None else self._sizes_of(t)
            if sizes is not None and int(np.prod(sizes)) > MAX_ELEMENTS:
                raise _NotEvaluable
            v = self._eval(t)
        except (
            _NotEvaluable,
            ValueError,
            IndexError,
            TypeError,
            OverflowError,
            ZeroDivisionError,
            RecursionError,
            FloatingPointError,
        ):
            v = None
        self._memo[key] = v
        return v

    def _in(self, node: gs.Node, i: int) -> npt.NDArray[np.generic]:
        if i >= len(node.inputs) or not node.inputs[i].name:
            raise _NotEvaluable
        v = self.value(node.inputs[i])
        if v is None:
            raise _NotEvaluable
        return v

    def _eval(self, t: gs.Tensor) -> npt.NDArray[np.generic]:
        c = constant_array(t)
        if c is not None:
            if c.size > MAX_ELEMENTS:
                raise _NotEvaluable
            return np.asarray(c)
        if not t.inputs:
            raise _NotEvaluable
        node = t.inputs[0]
        op = node.op
        if (node.domain or "") not in ("", "ai.onnx"):
            raise _NotEvaluable
        if op == "Shape":
            sizes = self._sizes_of(node.inputs[0])
            if sizes is None:
                raise _NotEvaluable
            arr = np.asarray(list(sizes), dtype=np.int64)
            r = len(arr)
            start = int(_attr(node, "start", 0))  # type: ignore[arg-type]
            end = _attr(node, "end", None)
            start = start + r if start < 0 else start
            end_i = r if end is None else int(end)  # type: ignore[arg-type]
            end_i = end_i + r if end_i < 0 else end_i
            return arr[max(0, start) : min(r, end_i)]
        if op == "Size":
            sizes = self._sizes_of(node.inputs[0])
            if sizes is None:
                raise _NotEvaluable
            return np.asarray(int(np.prod(sizes)), dtype=np.int64)
        ins = [
            self._in(node, i) if (i < len(node.inputs) and node.inputs[i].name) else None
            for i in range(len(node.inputs))
        ]
        if op in ("Identity", "Cast", "CastLike"):
            if op == "Identity":
                return ins[0]
            if op == "CastLike":
                return ins[0].astype(ins[1].dtype)
            to = int(_attr(node, "to"))  # type: ignore[arg-type]
            return ins[0].astype(_ONNX_NP.get(to, np.float32))
        if op == "Gather":
            return np.take(ins[0], ins[1].astype(np.int64), axis=int(_attr(node, "axis", 0)))  # type: ignore[arg-type]
        if op == "Unsqueeze":
            axes = _axes(node, ins)
            out = ins[0]
            r = out.ndim + len(axes or [])
            for a in sorted(x + r if x < 0 else x for x in (axes or [])):
                out = np.expand_dims(out, a)
            return out
        if op == "Squeeze":
            axes = _axes(node, ins)
            if axes is None:
                return np.squeeze(ins[0])
            return np.squeeze(ins[0], axis=tuple(a + ins[0].ndim if a < 0 else a for a in axes))
        if op == "Concat":
            return np.concatenate([x for x in ins if x is not None], axis=int(_attr(node, "axis")))  # type: ignore[arg-type]
        if op == "Slice":
            data = ins[0]
            starts, ends = ins[1].astype(np.int64), ins[2].astype(np.int64)
            axes = (
                list(ins[3].astype(np.int64))
                if len(ins) > 3 and ins[3] is not None
                else list(range(len(starts)))
            )
            steps = (
                list(ins[4].astype(np.int64))
                if len(ins) > 4 and ins[4] is not None
                else [1] * len(starts)
            )
            idx: list[slice] = [slice(None)] * data.ndim
            for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
                idx[int(a)] = slice(int(s), int(e), int(st))
            return data[tuple(idx)]
        if op == "Reshape":
            shape = [int(s) for s in ins[1]]
            shape = [
                ins[0].shape[i] if s == 0 and not _attr(node, "allowzero", 0) else s
                for i, s in enumerate(shape)
            ]
            return ins[0].reshape(shape)
        if op in _BINARY:
            return _BINARY[op](ins[0], ins[1])
        if op in _UNARY:
            return _UNARY[op](ins[0])
        if op == "Where":
            return np.where(ins[0].astype(bool), ins[1], ins[2])
        if op in ("Max", "Min", "Sum", "Mean"):
            f = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add}.get(op)
            if f is None:
                raise _NotEvaluable
            out = ins[0]
            for x in ins[1:]:
                out = f(out, x)
            return out
        if op in ("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin"):
            axes = _axes(node, ins)
            f = {
                "ReduceProd": np.prod,
                "ReduceSum": np.sum,
                "ReduceMax": np.max,
                "ReduceMin": np.min,
            }[op]
            keep = bool(_attr(node, "keepdims", 1))
            ax = None if not axes else tuple(axes)
            return np.asarray(f(ins[0], axis=ax, keepdims=keep)).astype(ins[0].dtype)
        if op == "Range":
            return np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(ins[0].dtype)
        if op == "ConstantOfShape":
            val = _attr(node, "value")
            fill = (
                np.asarray(val.values).reshape(-1)[0]
                if isinstance(val, gs.Constant)
                else np.float32(0)
            )
            shape = tuple(int(s) for s in ins[0])
            if int(np.prod(shape)) > MAX_ELEMENTS:
                raise _NotEvaluable
            return np.full(shape, fill)
        if op == "Expand":
            shape = tuple(int(s) for s in ins[1])
            out = ins[0] * np.ones(shape, dtype=ins[0].dtype)
            if out.size > MAX_ELEMENTS:
                raise _NotEvaluable
            return out
        if op == "Tile":
            return np.tile(ins[0], tuple(int(r) for r in ins[1]))
        if op == "Transpose":
            perm = _attr(node, "perm")
            return np.transpose(ins[0], perm)  # type: ignore[arg-type]
        raise _NotEvaluable


def _div(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return a / b


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Mod": np.fmod,
    "Pow": np.power,
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
}

_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Not": np.logical_not,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sqrt": np.sqrt,
    "Sign": np.sign,
    "Reciprocal": np.reciprocal,
}

_ONNX_NP = {
    1: np.float32,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    16: np.float32,
}


# ---------------------------------------------------------------------- editing
class Namer:
    """Fresh tensor/node names for one rewrite (names taken by the graph or given out before)."""

    def __init__(self, model: ModelIR) -> None:
        self._taken = set(model.tensors()) | {n.name for n in model.graph.nodes}
        self._n = 0

    def __call__(self, base: str) -> str:
        name = base or "spa"
        while name in self._taken:
            self._n += 1
            name = f"{base}__spa{self._n}"
        self._taken.add(name)
        return name


def element_source(
    t: gs.Tensor,
    elem: int,
    shapes: Mapping[str, tuple[int, ...]],
    evaluate: Callable[[gs.Tensor], npt.NDArray[np.generic] | None] | None = None,
) -> tuple[str, gs.Tensor, int] | None:
    """Where element `elem` of the 1-D/scalar tensor `t` comes from.

    Returns ("const", constant, flat index) when it is copied (through Concat / Unsqueeze /
    Squeeze / Identity / Cast / Reshape) from a constant; ("piece", tensor, 0) when it is a
    whole one-element run-time tensor (e.g. `Unsqueeze(Gather(Shape(x), 2))`) that a rewrite may
    replace by a constant; None otherwise. `shapes` gives static shapes of the tensors on the way.
    With `evaluate`, `Where(cond, a, b)` (TorchScript's expand idiom) follows the branch `cond`
    picks for that element.
    """
    from spa_compiler.ir import constant_value

    c = constant_value(t)
    if c is not None:
        return "const", c, elem
    if not t.inputs:
        return None
    node = t.inputs[0]
    found: tuple[str, gs.Tensor, int] | None = None
    if node.op in COPY_OPS and (node.domain or "") in ("", "ai.onnx"):
        if node.op == "Concat":
            off = 0
            for x in node.inputs:
                n = _length(x, shapes)
                if n is None:
                    break
                if off <= elem < off + n:
                    found = element_source(x, elem - off, shapes, evaluate)
                    break
                off += n
        else:
            found = element_source(node.inputs[0], elem, shapes, evaluate)
    elif node.op == "Where" and evaluate is not None:
        branch = _where_branch(node, elem, shapes, evaluate)
        if branch is not None:
            found = element_source(branch[0], branch[1], shapes, evaluate)
    if found is not None and found[0] == "const":
        return found
    if _length(t, shapes) == 1:
        return "piece", t, 0
    return found


def _where_branch(
    node: gs.Node,
    elem: int,
    shapes: Mapping[str, tuple[int, ...]],
    evaluate: Callable[[gs.Tensor], npt.NDArray[np.generic] | None],
) -> tuple[gs.Tensor, int] | None:
    """The branch (and element) of a 1-D Where that element `elem` comes from."""
    cond = evaluate(node.inputs[0])
    if cond is None:
        return None
    flat = np.asarray(cond).reshape(-1)
    pick = bool(flat[elem] if flat.size > 1 else flat[0])
    x = node.inputs[1 if pick else 2]
    n = _length(x, shapes)
    if n is None:
        return None
    return x, (elem if n > 1 else 0)


def _length(t: gs.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    from spa_compiler.ir import constant_value

    c = constant_value(t)
    if c is not None:
        return int(np.asarray(c.values).size)
    shape = shapes.get(t.name)
    return None if shape is None else int(np.prod(shape))


def rebuild(
    model: ModelIR,
    t: gs.Tensor,
    edits: Mapping[int, int],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, np.dtype],
    namer: Namer,
    evaluate: Callable[[gs.Tensor], npt.NDArray[np.generic] | None] | None = None,
) -> gs.Tensor:
    """A tensor equal to `t` with elements `edits` replaced, made of new nodes and constants.

    `t` itself (and everything else reading its chain) is left unchanged. Every edited element
    must have an `element_source`; a "piece" source is replaced by a constant of its shape.
    """
    from spa_compiler.ir import constant_value

    c = constant_value(t)
    if c is not None:
        vals = np.array(c.values, copy=True)
        flat = vals.reshape(-1)
        for e, v in edits.items():
            flat[e] = v
        return gs.Constant(namer((c.name or "shape") + "_pruned"), flat.reshape(vals.shape))
    if (
        all((element_source(t, e, shapes, evaluate) or ("",))[0] != "const" for e in edits)
        and _length(t, shapes) == 1
    ):
        shape = shapes.get(t.name, (1,))
        dtype = dtypes.get(t.name, np.dtype(np.int64))
        val = np.asarray([edits[0]], dtype=dtype).reshape(shape)
        return gs.Constant(namer(t.name + "_pruned"), val)
    node = t.inputs[0]
    new_inputs = list(node.inputs)
    if node.op == "Concat":
        off = 0
        for i, x in enumerate(node.inputs):
            n = _length(x, shapes)
            if n is None:
                raise ValueError(f"unknown length of {x.name}")
            sub = {e - off: v for e, v in edits.items() if off <= e < off + n}
            if sub:
                new_inputs[i] = rebuild(model, x, sub, shapes, dtypes, namer, evaluate)
            off += n
    elif node.op == "Where" and evaluate is not None:
        per_branch: dict[int, dict[int, int]] = {}
        for e, v in edits.items():
            br = _where_branch(node, e, shapes, evaluate)
            if br is None:
                raise ValueError(f"cannot follow {node.name}")
            k = 1 if br[0] is node.inputs[1] else 2
            per_branch.setdefault(k, {})[br[1]] = v
        for k, sub in per_branch.items():
            new_inputs[k] = rebuild(model, node.inputs[k], sub, shapes, dtypes, namer, evaluate)
    else:
        new_inputs[0] = rebuild(model, node.inputs[0], edits, shapes, dtypes, namer, evaluate)
    out = gs.Variable(namer(t.name + "_pruned"), dtype=t.dtype, shape=t.shape)
    new = gs.Node(
        node.op,
        namer((node.name or node.op) + "_pruned"),
        attrs=dict(node.attrs),
        inputs=new_inputs,
        outputs=[out],
        domain=node.domain,
    )
    model.graph.nodes.append(new)
    return out

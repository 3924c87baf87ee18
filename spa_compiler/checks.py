"""Checks of the input model and of the user's hints, run before any work (one-line errors).

* `check_shape_hints`: an `--input-shape` hint must name a real input, have its rank, and agree
  with every fixed dimension (a fixed 0 included); a contradiction names the hint and the model's
  shape.
* `check_compute_dtypes`: a model that computes in a dtype the runtimes here have no kernels for
  (bfloat16, float8) is refused with the reason; bfloat16 *storage* cast to float32 is fine.
* `check_finite_weights`: NaN or Inf in a weight (an initializer that a Conv, Gemm, MatMul or
  normalization reads) names the tensor; constants elsewhere may hold -inf on purpose
  (attention masks) and are left alone.
* `interface` / `check_interface`: the inputs and outputs (names, order, dtypes) a model exposes;
  a compiled model must expose the same.

Dims: an int >= 0 is fixed (0 included: a fixed empty dimension), anything else (a name, None, a
negative value such as Paddle2ONNX's -1) is symbolic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa_compiler.errors import InterfaceError, InvalidModelError, UnsupportedModelError, UsageError
from spa_compiler.ir import ModelIR, constant_value

#: Ops whose constant inputs are weights (checked for NaN/Inf).
WEIGHT_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "BatchNormalization",
        "InstanceNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
        "SimplifiedLayerNormalization", "SkipLayerNormalization", "PRelu",
    }
)

#: Element types the ONNX Runtime CPU kernels and our passes compute in.
_UNSUPPORTED_COMPUTE = {
    onnx.TensorProto.BFLOAT16: "bfloat16",
    **{
        getattr(onnx.TensorProto, n): n.lower()
        for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
        if hasattr(onnx.TensorProto, n)
    },
}


def is_fixed(d: Any) -> bool:
    """Whether a dimension is a fixed size (an int >= 0)."""
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) >= 0


def _real_inputs(model: ModelIR) -> list[gs.Variable]:
    return [t for t in model.graph.inputs if not isinstance(t, gs.Constant)]


def _fmt_shape(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join(str(d) if is_fixed(d) else (str(d) if d not in (None, "") else "?") for d in shape) + "]"


def declared_inputs(model: ModelIR | onnx.ModelProto) -> dict[str, tuple[Any, ...] | None]:
    """Real inputs (not initializers) -> declared dims: ints >= 0 fixed, else a name or None."""
    if isinstance(model, ModelIR):
        return {t.name: (tuple(t.shape) if t.shape is not None else None) for t in _real_inputs(model)}
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[Any, ...] | None] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            out[vi.name] = None
            continue
        out[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
    return out


def check_shape_hints(model: ModelIR | onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse a hint that names no input, has another rank, or contradicts a fixed dimension.

    Raises:
        UsageError: naming the hint and the model's shape.
    """
    inputs = declared_inputs(model)
    for name, hint in shapes.items():
        given = "x".join(str(d) for d in hint)
        if name not in inputs:
            raise UsageError(
                f"--input-shape {name}:{given} names no model input",
                hint=f"the inputs are {sorted(inputs)}",
            )
        shape = inputs[name]
        if shape is None:
            continue
        if len(shape) != len(hint):
            raise UsageError(
                f"--input-shape {name}:{given} has rank {len(hint)}, the model's input {name!r} "
                f"{_fmt_shape(shape)} has rank {len(shape)}",
                hint=f"give {len(shape)} dimensions",
            )
        for i, (d, h) in enumerate(zip(shape, hint)):
            if is_fixed(d) and int(d) != int(h):
                fixed = "x".join(str(int(x)) if is_fixed(x) else str(int(y)) for x, y in zip(shape, hint))
                raise UsageError(
                    f"--input-shape {name}:{given} contradicts the model: input {name!r} is "
                    f"{_fmt_shape(shape)}, dimension {i} is fixed to {int(d)}, not {int(h)}",
                    hint=f"only symbolic dimensions can be set, e.g. --input-shape {name}:{fixed}",
                )


def check_no_empty_inputs(model: ModelIR, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse inputs with a fixed 0-sized dimension for work that runs the model (compile, profile).

    Raises:
        UnsupportedModelError: naming the input and its shape (exit 3).
    """
    for t in _real_inputs(model):
        shape = shapes.get(t.name, t.shape)
        if shape is not None and any(is_fixed(d) and int(d) == 0 for d in shape):
            raise UnsupportedModelError(
                f"input {t.name!r} has a fixed 0-sized dimension {_fmt_shape(t.shape)}: every inference "
                "of this model sees an empty tensor, so there is nothing to time or to prune for",
                hint="re-export the model with the input's real size, or with a dynamic dimension",
            )


def _compute_dtype_problems(model: ModelIR) -> list[str]:
    found: list[str] = []
    for t in list(model.graph.inputs) + list(model.graph.outputs):
        code = _onnx_code(t.dtype)
        if code in _UNSUPPORTED_COMPUTE:
            found.append(f"{'input' if t in model.graph.inputs else 'output'} {t.name!r} is {_UNSUPPORTED_COMPUTE[code]}")
    for node in model.graph.nodes:
        if node.op not in WEIGHT_OPS:
            continue
        for t in node.inputs:
            code = _onnx_code(t.dtype) if t.dtype is not None else None
            if code in _UNSUPPORTED_COMPUTE:
                found.append(f"{node.op} {node.name or '?'} reads {t.name!r} in {_UNSUPPORTED_COMPUTE[code]}")
                break
    return found


def _onnx_code(dtype: Any) -> int | None:
    if dtype is None:
        return None
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return dtype
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except (TypeError, KeyError, ValueError):
        return None


def check_compute_dtypes(model: ModelIR) -> None:
    """Refuse a model that computes in bfloat16 or float8 (compile and profile run it on ONNX Runtime).

    Raises:
        UnsupportedModelError: naming the first tensors found (exit 3).
    """
    found = _compute_dtype_problems(model)
    if found:
        more = f" (and {len(found) - 2} more)" if len(found) > 2 else ""
        raise UnsupportedModelError(
            f"the model computes in a type spa-compiler does not compile: {'; '.join(found[:2])}{more}; "
            "ONNX Runtime's CPU provider, which times and checks every rewrite, has no such kernels",
            hint="export in float32 (or float16), e.g. model.float() before torch.onnx.export",
        )


def check_finite_weights(model: ModelIR) -> None:
    """Refuse NaN or Inf in a weight, naming the tensor and the node that reads it.

    Raises:
        InvalidModelError: exit 3.
    """
    seen: set[int] = set()
    for node in model.graph.nodes:
        if node.op not in WEIGHT_OPS:
            continue
        for t in node.inputs:
            c = constant_value(t)
            if c is None or id(c) in seen:
                continue
            seen.add(id(c))
            try:
                arr = np.asarray(c.values)
            except Exception:  # values numpy cannot hold (bfloat16 kept lazy): not checked
                continue
            if arr.dtype.kind != "f" or arr.size == 0:
                continue
            bad = ~np.isfinite(arr)
            n = int(np.count_nonzero(bad))
            if n:
                kinds = "NaN" if np.isnan(arr).any() else "Inf"
                if np.isnan(arr).any() and np.isinf(arr).any():
                    kinds = "NaN and Inf"
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InvalidModelError(
                    f"weight {c.name!r} (read by {node.op} {node.name or '?'}) holds {n} {kinds} "
                    f"value(s) of {arr.size}, first at index {list(first)}",
                    hint="the export or the training diverged; fix the weights and re-export",
                )


def interface(model: ModelIR | onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(kind, name, dtype) of every real input and every output, in order."""
    if isinstance(model, onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        rows = []
        for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
            for vi in vis:
                if kind == "input" and vi.name in inits:
                    continue
                et = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
                rows.append((kind, vi.name, onnx.TensorProto.DataType.Name(et)))
        return rows
    rows = []
    for kind, ts in (("input", _real_inputs(model)), ("output", model.graph.outputs)):
        for t in ts:
            code = _onnx_code(t.dtype)
            rows.append((kind, t.name, onnx.TensorProto.DataType.Name(code) if code else "UNDEFINED"))
    return rows


def check_interface(before: Sequence[tuple[str, str, str]], after: Sequence[tuple[str, str, str]]) -> None:
    """Raise InterfaceError if the inputs/outputs differ (names, order, dtypes)."""
    if list(before) == list(after):
        return
    diff = next(
        (f"{a} became {b}" for a, b in zip(before, after) if a != b),
        f"{len(before)} inputs+outputs became {len(after)}",
    )
    raise InterfaceError(
        f"the compiled model's interface differs from the input's ({diff}); nothing was written",
        hint="report it with the model: rewrites never change inputs or outputs",
    )


def check_runs(
    model: ModelIR, feeds: Mapping[str, np.ndarray], hints: Mapping[str, Sequence[int]] | None = None
) -> None:
    """Run the input model once on ONNX Runtime's CPU provider with the inputs the compile uses.

    Every compile checks and times its rewrites there, so a model ORT cannot run is refused now,
    with ORT's reason, instead of failing in the middle of a pass.

    Raises:
        UsageError: with shape hints given: the model does not run at those sizes (exit 2).
        UnsupportedModelError: otherwise (exit 3).
    """
    from spa_compiler.errors import SpaError
    from spa_compiler.ort import make_session

    try:
        make_session(model, optimize=False).run(None, dict(feeds))
    except SpaError:
        raise
    except Exception as e:  # onnxruntime's InvalidArgument, Fail, NotImplemented, ...
        why = " ".join(str(e).split())
        if len(why) > 300:
            why = why[:300] + "..."
        if hints:
            given = ", ".join(f"{k}:{'x'.join(str(d) for d in v)}" for k, v in hints.items())
            raise UsageError(
                f"the model does not run at the given input shapes (--input-shape {given}): "
                f"ONNX Runtime says: {why}",
                hint="give sizes the model accepts (e.g. those of the exporter's sample input)",
            ) from e
        raise UnsupportedModelError(
            f"ONNX Runtime (CPU) cannot run the input model, which every compile uses to check and "
            f"time its rewrites: {why}",
            hint="check that the model runs under onnxruntime.InferenceSession first",
        ) from e

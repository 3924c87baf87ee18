"""Model validity: the ONNX checker (full check) plus strict shape inference, >2 GB safe."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from spa_compiler.errors import InvalidModelError, SpaError, ValidationError
from spa_compiler.protos import (
    EXTERNAL_DATA_THRESHOLD,
    STRIPPED_LOCATION,
    proto_bytes,
    stripped_large_tensors,
)

if TYPE_CHECKING:
    from spa_compiler.ir import ModelIR


def check_model(
    model: onnx.ModelProto | ModelIR,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    what: str = "model",
    error: type[SpaError] = InvalidModelError,
) -> None:
    """Run `onnx.checker`, strict shape inference (what the checker's full check adds, with type
    checks) and our channel-consistency check; raise `error` on failure.

    A ModelIR is checked through its weightless export (`ModelIR.to_proto(weights=False)`): the
    checks read dims and dtypes, never weight values, so no copy of the weights is made.

    Args:
        model: The model (a ModelIR is exported first, without its weights).
        base_dir: Folder of the model file, for external data references.
        what: How to name the model in the message, e.g. "after pass 'prune-uniform'".
        error: The exception class to raise (InvalidModelError for input, ValidationError after
            a pass).
    """
    proto = model if isinstance(model, onnx.ModelProto) else model.to_proto(weights=False)
    del base_dir  # external data is loaded by then; large tensors are stripped below
    with stripped_large_tensors(proto) as small:
        try:
            if proto_bytes(small) >= EXTERNAL_DATA_THRESHOLD:  # pragma: no cover - defensive
                with tempfile.TemporaryDirectory() as d:
                    path = Path(d) / "m.onnx"
                    onnx.save_model(small, str(path), save_as_external_data=True)
                    onnx.checker.check_model(str(path), full_check=True)
            else:
                _checker(small)
                inferred = onnx.shape_inference.infer_shapes(small, check_type=True, strict_mode=True)
                check_channel_consistency(inferred)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = (
                "the input model is invalid: re-export it, or check it with onnx.checker"
                if error is InvalidModelError
                else "this is a bug in that pass: please report it with the model (-vv shows more)"
            )
            raise error(f"{what} fails ONNX validation: {first}", hint=hint) from e


def _checker(proto: onnx.ModelProto) -> None:
    """`onnx.checker.check_model` (not the full check), also for a model whose left-out tensors
    point to external data at `STRIPPED_LOCATION`: the checker wants that file to exist, so it
    runs on a copy in a temporary folder beside an empty (sparse) file of that name."""
    end = -1
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            if info.get("location") == STRIPPED_LOCATION:
                end = max(end, int(info.get("offset") or 0) + int(info.get("length") or 0))
    if end < 0:
        onnx.checker.check_model(proto, full_check=False)
        return
    with tempfile.TemporaryDirectory(prefix="spa-check-") as d:
        with open(Path(d) / STRIPPED_LOCATION, "wb") as f:
            f.truncate(end)
        path = Path(d) / "model.onnx"
        onnx.save_model(proto, str(path))
        onnx.checker.check_model(str(path), full_check=False)


def validate_after(model: ModelIR, pass_name: str) -> None:
    """Validate a model right after a modifying pass; the error names the pass."""
    check_model(model, what=f"model after pass {pass_name!r}", error=ValidationError)


def _dims(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = list(n.attribute[0].t.dims)
    return out


def check_channel_consistency(proto: onnx.ModelProto) -> None:
    """Channel counts agree between data and weights (ONNX shape inference does not check these).

    Checks Conv (X channels == W in-channels * group, bias == W out-channels), BatchNormalization
    (every parameter == X channels), Gemm / MatMul (reduction sizes), LayerNormalization (scale
    and bias == normalized shape). Raises onnx.checker.ValidationError naming the node.
    """
    dims = _dims(proto)

    def known(name: str, axis: int) -> int | None:
        d = dims.get(name)
        if not name or d is None or not d:
            return None
        try:
            v = d[axis]
        except IndexError:
            return None
        return v if isinstance(v, int) and v > 0 else None

    def fail(node: onnx.NodeProto, what: str) -> None:
        raise onnx.checker.ValidationError(f"node {node.name or node.op_type} ({node.op_type}): {what}")

    for n in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and len(n.input) >= 2:
            x, w = known(n.input[0], 1), known(n.input[1], 1)
            group = int(attrs.get("group", 1))
            if x is not None and w is not None and x != w * group:
                fail(n, f"input has {x} channels, weight expects {w} x group {group}")
            if len(n.input) > 2 and n.input[2]:
                b, o = known(n.input[2], 0), known(n.input[1], 0)
                if b is not None and o is not None and b != o:
                    fail(n, f"bias has {b} entries for {o} output channels")
        elif n.op_type == "BatchNormalization":
            c = known(n.input[0], 1)
            for p in n.input[1:5]:
                v = known(p, 0)
                if c is not None and v is not None and v != c:
                    fail(n, f"parameter {p} has {v} entries for {c} channels")
        elif n.op_type == "Gemm" and len(n.input) >= 2:
            a = known(n.input[0], 0 if attrs.get("transA", 0) else 1)
            b = known(n.input[1], 1 if attrs.get("transB", 0) else 0)
            if a is not None and b is not None and a != b:
                fail(n, f"reduction sizes differ: {a} vs {b}")
        elif n.op_type == "MatMul" and len(n.input) == 2:
            a, b = known(n.input[0], -1), known(n.input[1], -2)
            if a is not None and b is not None and a != b and len(dims.get(n.input[1], [])) >= 2:
                fail(n, f"reduction sizes differ: {a} vs {b}")
        elif n.op_type == "LayerNormalization":
            c = known(n.input[0], -1)
            for p in n.input[1:3]:
                v = known(p, -1)
                if c is not None and v is not None and v != c:
                    fail(n, f"parameter {p} has {v} entries for {c} features")

"""Helpers shared by the ops' schemas: dims out of TypeProtos, the TensorRT plugin attributes.

A shape-inference function sees an `onnx.shape_inference.InferenceContext`; these helpers turn its
TypeProtos into Python lists (an int per known dim, a str per symbolic one, None when neither) and
build the output TypeProto back. Inconsistent static shapes raise `onnx.shape_inference.InferenceError`,
which `onnx.shape_inference.infer_shapes(..., strict_mode=True)` and
`onnx.checker.check_model(..., full_check=True)` report with the node's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import defs
from onnx.shape_inference import InferenceError

__all__ = [
    "DOMAIN",
    "Dim",
    "InferenceError",
    "input_dims",
    "input_elem_type",
    "plugin_attributes",
    "set_output",
]

#: The ONNX domain of every op in runtime_ops.
DOMAIN = "spa.ops"

Dim = int | str | None


def input_elem_type(ctx: onnx.shape_inference.InferenceContext, i: int) -> int:
    """The element type of input i (0 when unknown or absent)."""
    if not ctx.has_input(i):
        return 0
    t = ctx.get_input_type(i)
    return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0


def input_dims(ctx: onnx.shape_inference.InferenceContext, i: int) -> list[Dim] | None:
    """Dims of input i: int (known), str (symbolic), None (unknown); None when the rank is unknown."""
    if not ctx.has_input(i):
        return None
    t = ctx.get_input_type(i)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def set_output(
    ctx: onnx.shape_inference.InferenceContext, j: int, elem_type: int, dims: Sequence[Dim] | None
) -> None:
    """Set output j's element type and (if known) shape."""
    t = onnx.TypeProto()
    t.tensor_type.elem_type = elem_type
    if dims is not None:
        shape = t.tensor_type.shape
        shape.SetInParent()
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    ctx.set_output_type(j, t)


def plugin_attributes() -> list[defs.OpSchema.Attribute]:
    """`plugin_version` / `plugin_namespace`: what TensorRT's ONNX parser reads to pick a plugin.

    They carry no meaning for ONNX or ONNX Runtime; declaring them lets the checker accept nodes
    that name the plugin explicitly (the defaults, "1" and "", are what the parser assumes).
    """
    return [
        defs.OpSchema.Attribute(
            "plugin_version",
            onnx.helper.make_attribute("plugin_version", "1"),
            "TensorRT plugin version the parser looks up (default '1'); ignored elsewhere.",
        ),
        defs.OpSchema.Attribute(
            "plugin_namespace",
            onnx.helper.make_attribute("plugin_namespace", ""),
            "TensorRT plugin namespace the parser looks up (default ''); ignored elsewhere.",
        ),
    ]


def check_equal(what: str, a: Dim, b: Dim) -> None:
    """Raise InferenceError when two statically known dims differ."""
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise InferenceError(f"{what}: {a} != {b}")


def register(schema: defs.OpSchema) -> None:
    """Register `schema` with onnx unless a schema of that name/domain/version already exists."""
    try:
        existing = defs.get_schema(schema.name, schema.since_version, schema.domain)
    except defs.SchemaError:
        existing = None
    if existing is not None and existing.since_version == schema.since_version:
        return
    defs.register_schema(schema)

"""A lowering: the lossless rewrites of one model for one target, as one value.

`Lowering(families, precision, fp16_io)` names what is applied; `lower(model, lowering, shapes)`
applies it (ORT's fusions, then our attention fusion for the blocks ORT's script left, then the
precision), and returns the exact ModelProto that is timed and written. Nothing here decides;
`select.py` measures and chooses.

Families:
    attention         ORT's `Attention` fusion (BERT-style packed QKV), per-node head counts
    mha               our `MultiHeadAttention` fusion of the attention blocks ORT's script misses
                      (other exporters, causal/boolean masks, RoPE, grouped-query KV repeats)
    layer_norm        LayerNormalization / SimplifiedLayerNormalization (RMSNorm) from primitives
    skip_layer_norm   residual Add + norm -> SkipLayerNormalization / SkipSimplifiedLayerNormalization
    gelu              Erf GELU -> Gelu, + bias -> BiasGelu (tanh GELU -> FastGelu)
    embed_layer_norm  word + position (+ segment) embedding Gathers + LayerNorm
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from spa_compiler.errors import UsageError
from spa_compiler.lowering.ort_fusions import ORT_FAMILIES

logger = logging.getLogger(__name__)

ALL_FAMILIES: tuple[str, ...] = (*ORT_FAMILIES, "mha")
#: Families that apply per target (TensorRT fuses attention and norms itself: its lowering is
#: the IR/opset, the precision and the builder flags).
TARGET_FAMILIES: dict[str, tuple[str, ...]] = {
    "ort-cpu": ALL_FAMILIES,
    "ort-cuda": ALL_FAMILIES,
    "tensorrt": (),
}


@dataclasses.dataclass(frozen=True)
class Lowering:
    """What is applied to every model timed and written for one compile.

    Attributes:
        families: Graph rewrites (members of ALL_FAMILIES), applied in ALL_FAMILIES order.
        precision: "fp32", or "fp16": the model is converted to float16 (the file written is fp16).
        fp16_io: With fp16, graph inputs and outputs are float16 too (default: float32 kept,
            behind Cast nodes, so the same feeds work).
    """

    families: tuple[str, ...] = ()
    precision: str = "fp32"
    fp16_io: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in ALL_FAMILIES]
        if bad:
            raise UsageError(f"unknown lowering families {bad}", hint=f"use {', '.join(ALL_FAMILIES)}")
        if self.precision not in ("fp32", "fp16"):
            raise UsageError(f"precision {self.precision!r}", hint="use fp32 or fp16")

    @property
    def is_identity(self) -> bool:
        return not self.families and self.precision == "fp32"

    def with_families(self, families: Sequence[str]) -> Lowering:
        order = [f for f in ALL_FAMILIES if f in set(families)]
        return dataclasses.replace(self, families=tuple(order))

    def describe(self) -> str:
        fam = "+".join(self.families) if self.families else "no graph rewrites"
        prec = self.precision + (" (fp16 I/O)" if self.precision == "fp16" and self.fp16_io else "")
        return f"{fam}, {prec}"

    def to_json(self) -> dict[str, Any]:
        return {"families": list(self.families), "precision": self.precision, "fp16_io": self.fp16_io}


def _as_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return model.to_proto()  # ModelIR


def tensor_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Static shape of every tensor at `input_shapes`: ONNX shape inference on a weightless copy,
    then one ONNX Runtime run for the tensors inference leaves without a static shape."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    fixed = _fix_inputs(light, input_shapes)
    _strip_weights(light)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # best effort: ORT fills the rest
        inferred = light
    shapes, dtypes = _collect_shapes(inferred)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes and n.op_type != "Constant"]
    if missing:
        _ort_shapes(model, fixed, missing, shapes)
    return shapes


def _ort_shapes(
    model: onnx.ModelProto, fixed: Mapping[str, tuple[int, ...]], missing: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
) -> None:
    """Shapes of `missing` from one ONNX Runtime run (zeros for integer inputs: shapes of the ops
    lowering looks at do not depend on input values)."""
    import numpy as np

    from spa_compiler.ort import make_session

    full = onnx.ModelProto()
    full.CopyFrom(model)
    known = {o.name for o in full.graph.output}
    for name in missing:
        if name not in known:
            full.graph.output.add(name=name)
    inits = {t.name for t in full.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in full.graph.input:
        if vi.name in inits:
            continue
        dt = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shp = fixed[vi.name]
        feeds[vi.name] = (rng.standard_normal(shp).astype(dt) if np.issubdtype(dt, np.floating)
                          else np.zeros(shp, dtype=dt))
    try:
        sess = make_session(full, optimize=False)
        for meta, val in zip(sess.get_outputs(), sess.run(None, feeds), strict=False):
            shapes.setdefault(meta.name, tuple(int(d) for d in np.asarray(val).shape))
    except Exception:  # a model ORT cannot run: the rewrites skip what they cannot size
        pass


@dataclasses.dataclass
class Lowered:
    """The result of `lower`: the model as timed and written, and what each rewrite did."""

    model: onnx.ModelProto
    fused: dict[str, dict[str, int]]
    skipped: dict[str, int]


def lower(model: Any, lowering: Lowering, input_shapes: Mapping[str, Sequence[int]]) -> Lowered:
    """Apply `lowering` to `model` (a ModelProto or ModelIR, not modified).

    A rewrite that raises on this model (a structure ORT's script does not expect, say) is left
    out for it and counted in `skipped` ("failed:<family>"); the same model always gets the same
    result, so a candidate is written exactly as it was timed.
    """
    proto = _as_proto(model)
    fused: dict[str, dict[str, int]] = {}
    skipped: dict[str, int] = {}
    ort_fams = [f for f in lowering.families if f in ORT_FAMILIES]
    if ort_fams or "mha" in lowering.families:
        from spa_compiler.lowering.ort_fusions import fuse

        shapes = tensor_shapes(proto, input_shapes)
        if ort_fams:
            try:
                proto, counts = fuse(proto, ort_fams, shapes)
                fused["ort"] = counts
            except Exception as e:  # ORT's script raising on an unexpected pattern
                logger.debug("ORT fusions failed: %s", e)
                skipped["failed:ort-fusions"] = 1
        if "mha" in lowering.families:
            from spa_compiler.lowering.attention import fuse_mha

            if fused.get("ort"):
                shapes = tensor_shapes(proto, input_shapes)
            try:
                proto, counts, unmatched = fuse_mha(proto, shapes)
                fused["mha"] = counts
                skipped.update(unmatched)
            except Exception as e:
                logger.debug("attention fusion failed: %s", e)
                skipped["failed:mha"] = 1
    if lowering.precision == "fp16":
        from spa_compiler.latency.ort_cuda import convert_float16

        proto = convert_float16(proto, keep_io_types=not lowering.fp16_io)
    return Lowered(proto, fused, skipped)


def _fix_inputs(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Give every graph input static dims (`input_shapes`, else the model's; symbolic -> 1)."""
    inits = {t.name for t in proto.graph.initializer}
    fixed: dict[str, tuple[int, ...]] = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        given = input_shapes.get(vi.name)
        out = []
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            v = int(given[k]) if given is not None and k < len(given) else (
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)
            d.Clear()
            d.dim_value = v
            out.append(v)
        fixed[vi.name] = tuple(out)
    return fixed


def _strip_weights(proto: onnx.ModelProto) -> None:
    """Large float initializers keep dims but no data (shape inference needs dims only)."""
    for t in proto.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE) and n > 64:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value="__stripped__")


def _collect_shapes(proto: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape") and all(
                d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes, {}

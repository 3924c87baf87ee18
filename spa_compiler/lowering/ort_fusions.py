"""ONNX Runtime's own transformer fusions (`onnxruntime.transformers`), one family at a time.

Before:  the exporter's decomposed subgraphs: MatMul/Reshape/Transpose/Softmax attention,
         ReduceMean/Sub/Pow/Sqrt/Div layer norms, Add + LayerNorm, Erf-GELU, Gather + Add +
         LayerNorm embeddings.
After:   com.microsoft contrib ops: Attention, LayerNormalization / SimplifiedLayerNormalization,
         SkipLayerNormalization / SkipSimplifiedLayerNormalization, Gelu / BiasGelu / FastGelu,
         EmbedLayerNormalization.

ORT's attention fusion takes ONE `num_heads` for the whole model and fails with 0 (auto) when a
Reshape target is computed at run time. A pruned model keeps a different head count per layer, so
the head count of each attention block is read here from the static shape of its query Reshape
(B, S, heads, head_dim), computed at the compile's input shapes: every fused node gets its own
`num_heads`, whatever the exporter and whatever the search left.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import onnx

logger = logging.getLogger(__name__)

#: Fusion families of ORT's script, each switched on alone by `fuse`.
ORT_FAMILIES: tuple[str, ...] = ("attention", "layer_norm", "skip_layer_norm", "gelu", "embed_layer_norm")

#: What each family's fused nodes are called (counted in reports).
FUSED_OPS: dict[str, tuple[str, ...]] = {
    "attention": ("Attention", "MultiHeadAttention"),
    "layer_norm": ("LayerNormalization", "SimplifiedLayerNormalization"),
    "skip_layer_norm": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"),
    "gelu": ("Gelu", "BiasGelu", "FastGelu", "QuickGelu"),
    "embed_layer_norm": ("EmbedLayerNormalization",),
}


def _options(families: Sequence[str]) -> Any:
    from onnxruntime.transformers.fusion_options import FusionOptions

    o = FusionOptions("bert")
    on = set(families)
    o.enable_attention = "attention" in on
    o.enable_layer_norm = "layer_norm" in on or "skip_layer_norm" in on  # skip LN fuses from LN
    o.enable_skip_layer_norm = "skip_layer_norm" in on
    o.enable_bias_skip_layer_norm = "skip_layer_norm" in on
    o.enable_gelu = "gelu" in on
    o.enable_bias_gelu = "gelu" in on
    o.enable_embed_layer_norm = "embed_layer_norm" in on
    o.enable_rotary_embeddings = False  # ORT's rotary fusion needs its own exporter's pattern
    o.enable_qordered_matmul = False
    o.enable_gelu_approximation = False  # lossy (tanh for erf): never part of lowering
    o.enable_gemm_fast_gelu = False
    return o


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's script logs warnings (producer mismatch, num_heads guesses) meant for its own CLI."""
    names = ["onnxruntime.transformers", "fusion_base", "onnx_model", "fusion_attention", "onnx_model_bert"]
    saved = []
    for n in names:
        lg = logging.getLogger(n)
        saved.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in saved:
            lg.setLevel(lvl)


def fuse(
    model: onnx.ModelProto, families: Sequence[str], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` with ORT's fusions of `families` applied; (model, fused node counts).

    Args:
        model: The model (not modified).
        families: Members of ORT_FAMILIES.
        shapes: Static shape of every tensor at the compile's input shapes (per-node head counts).
    """
    fams = [f for f in families if f in ORT_FAMILIES]
    if not fams:
        return model, {}
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    # ORT's script copies tensors and re-runs shape inference many times: on large models it is
    # run on a weightless copy (matrices stripped to their dims) unless a family reads weight
    # values (the Attention fusion packs Q, K and V), then the arrays are put back by name.
    strip = "attention" not in fams
    work, held = _weightless(model) if strip else (copy.deepcopy(model), {})
    before = collections.Counter(n.op_type for n in work.graph.node if n.domain == "com.microsoft")
    with _quiet():
        bert = BertOnnxModel(work, num_heads=0, hidden_size=0)
        fusion = bert.attention_fusion
        fallback = fusion.get_num_heads_and_hidden_size

        def heads_of(reshape_q: onnx.NodeProto) -> tuple[int, int]:
            shp = shapes.get(reshape_q.output[0])
            if shp is not None and len(shp) == 4 and shp[2] > 0 and shp[3] > 0:
                return int(shp[2]), int(shp[2] * shp[3])
            return fallback(reshape_q)

        fusion.get_num_heads_and_hidden_size = heads_of  # per node, from this model's shapes
        bert.optimize(_options(fams), add_dynamic_axes=False)
        bert.topological_sort()
    out = bert.model
    if held:
        _restore(out, held)
    after = collections.Counter(n.op_type for n in out.graph.node if n.domain == "com.microsoft")
    counts = {op: after[op] - before.get(op, 0) for op in after if after[op] > before.get(op, 0)}
    if counts and not any(o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.add(domain="com.microsoft", version=1)
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    return out, counts


_STRIP_MIN_ELEMENTS = 4096
_STRIPPED = "__spa_lowering_stripped__"


def _weightless(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of `model` whose large float initializers keep name, type and dims but no data."""
    held: dict[str, onnx.TensorProto] = {}
    keep = []
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and n >= _STRIP_MIN_ELEMENTS:
            held[t.name] = t
        else:
            keep.append(t)
    light = onnx.ModelProto()
    graph = model.graph
    light.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                                   producer_name=model.producer_name, metadata_props=model.metadata_props))
    g = onnx.GraphProto()
    g.CopyFrom(onnx.GraphProto(name=graph.name, node=graph.node, input=graph.input, output=graph.output,
                               value_info=graph.value_info, initializer=keep))
    for name, t in held.items():
        stub = g.initializer.add(name=name, data_type=t.data_type, dims=t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=_STRIPPED)
    light.graph.CopyFrom(g)
    return light, held


def _restore(model: onnx.ModelProto, held: Mapping[str, onnx.TensorProto]) -> None:
    """Put the stripped arrays back; an initializer ORT derived from a stripped one is an error."""
    for i, t in enumerate(model.graph.initializer):
        if t.data_location == onnx.TensorProto.EXTERNAL and any(
                e.key == "location" and e.value == _STRIPPED for e in t.external_data):
            if t.name not in held:
                raise ValueError(f"ORT's fusion made {t.name!r} from a weight it was not given")
            model.graph.initializer[i].CopyFrom(held[t.name])

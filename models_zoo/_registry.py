"""The zoo's registry: one `ZooModel` per tiny model, keyed by name. Torch-free.

Each entry points at its torch definition by string (`factory`), so listing models, reading their
shapes or making sample inputs does not import torch.
"""

from __future__ import annotations

from spa_compiler.models_zoo._spec import ZooModel, image_inputs, token_inputs

_PKG = "spa_compiler.models_zoo"
_IMAGE = {"pixel_values": (2, 3, 32, 32)}
_TOKENS = {"input_ids": (2, 16)}
_BS = {0: "batch", 1: "sequence"}
_VOCAB = 256
_MAX_POSITIONS = 64

_ENTRIES = (
    ZooModel(
        name="tiny_resnet",
        description="ResNet: stem, 2 BasicBlocks at 16 ch, 2 at 32 ch (stride 2), linear head.",
        coupling="residual Add groups; conv→BN→ReLU→conv→BN chains; 1x1 conv→BN downsample",
        input_names=("pixel_values",),
        output_names=("logits",),
        input_shapes=_IMAGE,
        dynamic_axes={},
        factory=f"{_PKG}.tiny_resnet:TinyResNet",
        inputs_fn=image_inputs("pixel_values"),
    ),
    ZooModel(
        name="tiny_mobilenet",
        description="MobileNetV2 inverted residuals (1x1 expand, 3x3 dw, 1x1 project), ReLU6.",
        coupling="depthwise conv (group=C) ties in/out channels; linear-bottleneck residual Add",
        input_names=("pixel_values",),
        output_names=("logits",),
        input_shapes=_IMAGE,
        dynamic_axes={},
        factory=f"{_PKG}.tiny_mobilenet:TinyMobileNet",
        inputs_fn=image_inputs("pixel_values"),
    ),
    ZooModel(
        name="tiny_densenet",
        description="DenseNet-BC: 2 dense blocks (growth 8) and a transition; BN-ReLU-conv layers.",
        coupling="Concat of all earlier feature maps on channels (index mapping); BN after Concat",
        input_names=("pixel_values",),
        output_names=("logits",),
        input_shapes=_IMAGE,
        dynamic_axes={},
        factory=f"{_PKG}.tiny_densenet:TinyDenseNet",
        inputs_fn=image_inputs("pixel_values"),
    ),
    ZooModel(
        name="tiny_shufflenet",
        description="ShuffleNet-V2 stage: a stride-2 unit and 2 split units with channel shuffle.",
        coupling="channel split (Split) + Concat + shuffle (Reshape-Transpose-Reshape); dw conv",
        input_names=("pixel_values",),
        output_names=("logits",),
        input_shapes=_IMAGE,
        dynamic_axes={},
        factory=f"{_PKG}.tiny_shufflenet:TinyShuffleNet",
        inputs_fn=image_inputs("pixel_values"),
    ),
    ZooModel(
        name="tiny_vit",
        description="ViT: 4x4 patch-embed conv, cls token, 2 pre-LN blocks (4 heads), linear head.",
        coupling="attention heads via Reshape/Transpose; residual stream + LayerNorm; GELU MLP",
        input_names=("pixel_values",),
        output_names=("logits",),
        input_shapes=_IMAGE,
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        factory=f"{_PKG}.tiny_vit:TinyViT",
        inputs_fn=image_inputs("pixel_values"),
        notes="dynamic batch only (the token count is fixed by the 32x32 image)",
    ),
    ZooModel(
        name="tiny_bert",
        description="BERT encoder: word+position embeddings, 2 post-LN layers (4 heads), pooler.",
        coupling="attention heads + additive padding mask; post-LN residual; embedding Gather",
        input_names=("input_ids", "attention_mask"),
        output_names=("last_hidden_state", "pooler_output"),
        input_shapes={"input_ids": (2, 16), "attention_mask": (2, 16)},
        dynamic_axes={
            "input_ids": _BS,
            "attention_mask": _BS,
            "last_hidden_state": _BS,
            "pooler_output": {0: "batch"},
        },
        dim_max={"sequence": _MAX_POSITIONS},
        factory=f"{_PKG}.tiny_bert:TinyBert",
        inputs_fn=token_inputs(_VOCAB, mask_name="attention_mask"),
    ),
    ZooModel(
        name="tiny_gpt",
        description="GPT-2 decoder: wte+wpe, 2 pre-LN layers (fused QKV, 4 heads), tied LM head.",
        coupling="shared weight: embedding Gather + tied LM head MatMul; heads; causal mask buffer",
        input_names=("input_ids",),
        output_names=("logits",),
        input_shapes=_TOKENS,
        dynamic_axes={"input_ids": _BS, "logits": _BS},
        dim_max={"sequence": _MAX_POSITIONS},
        factory=f"{_PKG}.tiny_gpt:TinyGpt",
        inputs_fn=token_inputs(_VOCAB),
    ),
    ZooModel(
        name="tiny_llama",
        description="LLaMA decoder: RMSNorm, RoPE, GQA (4 q / 2 kv heads), SwiGLU, tied head.",
        coupling="GQA kv-head groups; RoPE rotate-half pairs; SwiGLU gate*up; tied LM head",
        input_names=("input_ids",),
        output_names=("logits",),
        input_shapes=_TOKENS,
        dynamic_axes={"input_ids": _BS, "logits": _BS},
        dim_max={"sequence": _MAX_POSITIONS},
        factory=f"{_PKG}.tiny_llama:TinyLlama",
        inputs_fn=token_inputs(_VOCAB),
    ),
)

MODELS: dict[str, ZooModel] = {entry.name: entry for entry in _ENTRIES}

"""Models built on the GPU machine (torchvision and transformers are there, not here).

    python -m benchmarks.cost.device_models mobilenetv3 OUT.onnx
    python -m benchmarks.cost.device_models llama1b OUT.onnx     # external data beside it

``mobilenetv3``: torchvision's MobileNetV3-Large, random weights, TorchScript export, opset 17.
``llama1b``: transformers' LlamaForCausalLM with LLaMA-3.2-1B's shapes (hidden 2048, 16 layers,
32 query / 8 KV heads, FFN 8192) and a 32000-token vocabulary: 1.1 B parameters, 4.4 GB in
fp32 (external data), random weights; TorchScript export of ``(input_ids, attention_mask,
position_ids) -> logits``,
``use_cache=False``, eager attention.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["mobilenetv3", "llama1b"])
    ap.add_argument("out")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    if args.name == "mobilenetv3":
        import torchvision

        m = torchvision.models.mobilenet_v3_large(weights=None).eval()
        torch.onnx.export(m, (torch.randn(1, 3, 224, 224),), str(out), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048,
                          tie_word_embeddings=False, use_cache=False, attn_implementation="eager")
        m = LlamaForCausalLM(cfg).eval()

        class Wrap(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor) -> torch.Tensor:
                # mask and positions as inputs: the TorchScript exporter cannot trace transformers'
                # own construction of them (aten::diff), as models_zoo/real.py notes for SmolLM2
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).logits

        ids = torch.randint(0, 32000, (1, 128))
        args_ = (ids, torch.ones_like(ids), torch.arange(128)[None])
        axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "position_ids", "logits")}
        with torch.no_grad():
            torch.onnx.export(Wrap(m), args_, str(out), dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask", "position_ids"], output_names=["logits"],
                              dynamic_axes=axes)
    n = sum(p.numel() for p in m.parameters())
    size = sum(f.stat().st_size for f in out.parent.iterdir() if f.is_file())
    print(f"{out}: {n / 1e6:.1f} M parameters, {size / 2**30:.2f} GiB on disk, {time.time() - t0:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Models at the sizes users bring, built in plain torch from a seed (no torchvision, no hub).

    python -m benchmarks.cost.models resnet50 OUT.onnx            # torchvision-style ResNet-50
    python -m benchmarks.cost.models minilm OUT.onnx              # BERT at all-MiniLM-L6-v2's dims
    python -m benchmarks.cost.models smollm2 OUT.onnx             # LLaMA at SmolLM2-135M's dims
    python -m benchmarks.cost.models llama1b DIR/model.onnx        # LLaMA at LLaMA-3.2-1B's dims (4.2 GB)
    python -m benchmarks.cost.models llama-mini DIR/model.onnx     # the same layout, tiny (tests)
    python -m benchmarks.cost.models resnet-mini OUT.onnx         # ResNet-50's blocks, one per stage, width 8

Every model is exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17) the way a user exports a torchvision model: eval mode, constant folding on (BatchNorm
folded into the convolutions), a dynamic batch (and sequence) axis. Weights are random (seeded);
the compile's cost does not depend on their values.

``resnet50``: Bottleneck blocks [3, 4, 6, 3], widths 64..512 (x4 expansion), stride on the 3x3
conv (torchvision's ResNet-50 v1.5), 25.6 M parameters, input ``input: (batch, 3, 224, 224)``.
``minilm``: `models_zoo.tiny_bert` at hidden 384, 6 layers, 12 heads, FFN 1536, vocab 30522.
``smollm2``: `models_zoo.tiny_llama` at hidden 576, 30 layers, 9 query / 3 KV heads, FFN 1536,
vocab 49152, 512 positions (134.5 M parameters).
``llama1b``: `models_zoo.tiny_llama` at LLaMA-3.2-1B's shapes (hidden 2048, 16 layers, 32 query /
8 KV heads, FFN 8192), a 32000-token vocabulary tied to the LM head, 2048 positions: 1.05 B
parameters, 4.2 GB of fp32 weights, written as external data (`model.onnx.data`, one file) beside
the model. Built in plain torch, so it builds wherever torch does (the GPU host, or here).
``llama-mini``: the same layout at hidden 64, 2 layers, FFN 256, also with external data (tests
of the 1B case's path on any machine).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4), BN after each, ReLU; projection shortcut when needed."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision.models.resnet50's architecture (v1.5), 1000 classes."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, base: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_ch = base
        for i, n in enumerate(layers):
            width = base * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomize_norms(module: nn.Module, seed: int) -> None:
    """BatchNorm statistics and affine parameters drawn from a seed (a trained net's are not 0/1)."""
    g = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean.data = 0.1 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], dict]:
    """(module in eval mode, example inputs, input names, dynamic axes)."""
    torch.manual_seed(seed)
    if name in ("resnet50", "resnet-mini"):
        m: nn.Module = ResNet50() if name == "resnet50" else ResNet50((1, 1, 1, 1), num_classes=10, base=8)
        _randomize_norms(m, seed)
        return m.eval(), (torch.randn(1, 3, 224, 224),), ["input"], {"input": {0: "batch"}, "logits": {0: "batch"}}
    if name == "minilm":
        from spa_compiler.models_zoo.tiny_bert import TinyBert

        m = TinyBert(vocab_size=30522, max_positions=512, hidden=384, num_layers=6, num_heads=12,
                     intermediate=1536)
        ids = torch.randint(0, 30522, (4, 128))
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
        return m.eval(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], axes
    if name == "smollm2":
        from spa_compiler.models_zoo.tiny_llama import TinyLlama

        m = TinyLlama(vocab_size=49152, max_positions=512, hidden=576, num_layers=30, num_heads=9,
                      num_kv_heads=3, intermediate=1536)
        with torch.no_grad():  # RMSNorm weights near 1 as in a trained model, not exactly 1
            for p_name, p in m.named_parameters():
                if p_name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        ids = torch.randint(0, 49152, (1, 128))
        return m.eval(), (ids,), ["input_ids"], {"input_ids": {0: "batch", 1: "sequence"}}
    if name in ("llama1b", "llama-mini"):
        from spa_compiler.models_zoo.tiny_llama import TinyLlama

        dims = (dict(vocab_size=32000, max_positions=2048, hidden=2048, num_layers=16, num_heads=32,
                     num_kv_heads=8, intermediate=8192) if name == "llama1b" else
                dict(vocab_size=512, max_positions=512, hidden=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate=256))
        m = TinyLlama(**dims)
        with torch.no_grad():
            for p_name, p in m.named_parameters():
                if p_name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        ids = torch.randint(0, dims["vocab_size"], (1, 128))
        return m.eval(), (ids,), ["input_ids"], {"input_ids": {0: "batch", 1: "sequence"}}
    raise SystemExit(f"unknown model {name!r}: use {', '.join(NAMES)}")


NAMES = ("resnet50", "resnet-mini", "minilm", "smollm2", "llama1b", "llama-mini")


def _one_data_file(path: pathlib.Path) -> None:
    """Re-save an export with its weights as one external-data file `<name>.data` (the exporter
    writes one file per tensor beyond 2 GB); removes the per-tensor files."""
    import onnx

    folder = path.parent
    before = {f.name for f in folder.iterdir()}
    proto = onnx.load(str(path))  # with its external data
    data = path.name + ".data"
    tmp = path.with_name(path.name + ".one")
    onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    del proto
    for name in before - {path.name, data, tmp.name}:
        (folder / name).unlink()
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    module, inputs, names, axes = build(args.name, args.seed)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs = ["logits"] if args.name != "minilm" else ["last_hidden_state", "pooler_output"]
    if args.name == "minilm":
        axes = {**axes, "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    elif args.name in ("smollm2", "llama1b", "llama-mini"):
        axes = {**axes, "logits": {0: "batch", 1: "sequence"}}
    if args.name.startswith("llama"):  # external data: exported into the model's own folder
        with torch.no_grad():
            torch.onnx.export(module, inputs, str(out), dynamo=False, opset_version=17, input_names=names,
                              output_names=outputs, dynamic_axes=axes)
        del module
        _one_data_file(out)
        print(out, f"{sum(f.stat().st_size for f in out.parent.iterdir()) / 2**30:.2f} GiB on disk", file=sys.stderr)
        return 0
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(module, inputs, str(tmp), dynamo=False, opset_version=17, input_names=names,
                      output_names=outputs, dynamic_axes=axes)
    tmp.replace(out)
    print(out, f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

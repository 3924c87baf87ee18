"""tiny_resnet: a two-stage ResNet with BasicBlocks (conv→BN→ReLU→conv→BN, + shortcut, ReLU).

Couplings: every block's output channels are tied to its shortcut through the residual Add
(a residual Add group spans the stem and all stage-1 blocks); stage 2 opens with a stride-2 block
whose shortcut is a 1x1 conv→BN downsample, which starts a new group.

    pixel_values: (batch=2, 3, 32, 32) → logits: (batch, 10)
    stem 3→16, stage1 2×Block(16), stage2 Block(16→32, stride 2, 1x1 downsample) + Block(32),
    global average pool, Linear(32→10). About 43k parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3→BN→ReLU→conv3x3→BN, plus identity (or 1x1 conv→BN) shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """Stem + two stages of BasicBlocks + pooled linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(pixel_values)))
        return self.fc(torch.flatten(self.pool(x), 1))

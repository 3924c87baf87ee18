"""tiny_shufflenet: ShuffleNet-V2 units: channel split, two branches, Concat, channel shuffle.

Couplings: `torch.chunk` (Split) hands the first half of the channels straight to the Concat and
the second half to the branch; the shuffle (Reshape (B,2,C/2,H,W) → Transpose → Reshape) then
interleaves the two halves, so a channel index is remapped through Split, Concat and a
reshape-transpose-reshape before it reaches the next unit. Depthwise convs (group == channels)
tie input and output channels one to one.

    pixel_values: (batch=2, 3, 32, 32) → logits: (batch, 10)
    stem conv3x3 s2 3→24 BN ReLU, MaxPool 3x3 s2 (→8x8);
    down unit 24→48 (stride 2: both branches, no split), 2 basic units at 48 (split 24 | 24);
    conv1x1 48→64 BN ReLU, global average pool, Linear(64→10). About 10k parameters.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) → view (B, g, C/g, H, W) → swap axes 1, 2 → view (B, C, H, W)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """1x1 conv (no bias) → BN → ReLU."""
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


def depthwise_bn(ch: int, stride: int) -> list[nn.Module]:
    """3x3 depthwise conv (group == ch, no bias) → BN."""
    return [
        nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False),
        nn.BatchNorm2d(ch),
    ]


class ShuffleUnit(nn.Module):
    """ShuffleNet-V2 unit; stride 1 splits the input, stride 2 feeds both branches."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_ch = out_ch // 2
        if stride == 1:
            if in_ch != out_ch:
                raise ValueError("a stride-1 shuffle unit keeps its width")
            self.branch1 = nn.Sequential()
            b2_in = in_ch // 2
        else:
            self.branch1 = nn.Sequential(
                *depthwise_bn(in_ch, stride), *conv_bn_relu(in_ch, branch_ch)
            )
            b2_in = in_ch
        self.branch2 = nn.Sequential(
            *conv_bn_relu(b2_in, branch_ch),
            *depthwise_bn(branch_ch, stride),
            *conv_bn_relu(branch_ch, branch_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module):
    """Stem + max pool + one ShuffleNet-V2 stage + 1x1 head + pooled linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU()
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage = nn.Sequential(
            ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1)
        )
        self.head = nn.Sequential(*conv_bn_relu(48, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stage(self.maxpool(self.stem(pixel_values))))
        return self.fc(torch.flatten(self.pool(x), 1))

"""tiny_mobilenet: MobileNetV2-style inverted residuals with depthwise convs and ReLU6.

Couplings: the depthwise conv (group == channels) ties its input and output channels one to one
(pruning the expansion conv's outputs must prune the depthwise conv and the projection's inputs
alike); the linear-bottleneck residual Add ties the projections of consecutive same-width blocks.

    pixel_values: (batch=2, 3, 32, 32) → logits: (batch, 10)
    stem conv3x3 s2 3→16 BN ReLU6;
    IR(16→16, t=1)       dw3x3→BN→ReLU6→pw1x1→BN, residual;
    IR(16→24, t=4, s=2)  pw1x1 expand→BN→ReLU6→dw3x3 s2→BN→ReLU6→pw1x1 project→BN;
    IR(24→24, t=4)       same, residual;
    head conv1x1 24→64 BN ReLU6, global average pool, Dropout, Linear(64→10). About 13k parameters.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → optional ReLU6, 'same' padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """[pw expand →] depthwise 3x3 → pw linear projection, residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(in_ch, hidden, 1))
        layers.append(conv_bn(hidden, hidden, 3, stride=stride, groups=hidden))
        layers.append(conv_bn(hidden, out_ch, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class TinyMobileNet(nn.Module):
    """Stem + three inverted residual blocks + 1x1 head + pooled linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, stride=2),
            InvertedResidual(16, 16, stride=1, expand_ratio=1),
            InvertedResidual(16, 24, stride=2, expand_ratio=4),
            InvertedResidual(24, 24, stride=1, expand_ratio=4),
            conv_bn(24, 64, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(pixel_values))
        return self.classifier(torch.flatten(x, 1))

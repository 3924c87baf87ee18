"""tiny_densenet: DenseNet-BC blocks, each layer reading the Concat of all earlier feature maps.

Couplings: a layer's output channels land at a fixed offset inside every later Concat along the
channel axis, so pruning them must remap the input channels of every later BN and 1x1 conv
(index mapping through Concat); the pre-activation BN after each Concat mixes channels that come
from different producers, so it cannot be folded into one conv.

    pixel_values: (batch=2, 3, 32, 32) → logits: (batch, 10)
    stem conv3x3 3→16; dense block 1: 3 layers, growth 8 (16→40 channels);
    transition BN→ReLU→conv1x1 40→20→AvgPool2; dense block 2: 2 layers, growth 8 (20→36);
    BN→ReLU, global average pool, Linear(36→10).
    Each dense layer: BN→ReLU→conv1x1 (→4·growth)→BN→ReLU→conv3x3 (→growth). About 18k parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """Bottleneck layer: Concat(inputs) → BN→ReLU→conv1x1→BN→ReLU→conv3x3 → `growth` channels."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, dim=1)
        x = self.conv1(self.relu(self.norm1(x)))
        return self.conv2(self.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """`num_layers` DenseLayers; returns the Concat of the input and every layer's output."""

    def __init__(self, num_layers: int, in_ch: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth, growth) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class TinyDenseNet(nn.Module):
    """Stem + dense block + transition + dense block + pooled linear classifier."""

    def __init__(self, num_classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block1 = DenseBlock(3, 16, growth)
        c1 = 16 + 3 * growth
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c1), nn.ReLU(), nn.Conv2d(c1, c1 // 2, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = DenseBlock(2, c1 // 2, growth)
        c2 = c1 // 2 + 2 * growth
        self.norm = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.stem(pixel_values))))
        x = self.pool(self.relu(self.norm(x)))
        return self.fc(torch.flatten(x, 1))

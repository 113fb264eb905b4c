"""A user's own model, defined outside fxmeta, with a factory function fxmeta can call.

Use it as the model spec ``examples/my_model.py:factory``, e.g.::

    fxmeta transform examples/my_model.py:factory --data digits --out my_pruned.pt
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv-bn-relu twice with a residual connection (the add couples the channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallNet(nn.Module):
    """A small CNN for 8x8 / 16x16 grayscale images such as the digits data."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ConvBlock(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.block2 = ConvBlock(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def factory(num_classes: int = 10, in_channels: int = 1) -> SmallNet:
    """What the spec ``examples/my_model.py:factory`` calls (with --num-classes / --in-channels)."""
    return SmallNet(num_classes=num_classes, in_channels=in_channels)

"""The paper's CIFAR-style networks: ResNet20/32/56/110 and VGG11/16/19 with BatchNorm.

All forwards are free of data-dependent control flow, so ``torch.fx.symbolic_trace``
sees the whole network, and all of them run on inputs from 8x8 (digits) upwards.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import SpecError


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, as in He et al.), BatchNorm at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add; 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        # Option B shortcut (projection), as in Torch-Pruning / DepGraph's CIFAR ResNet56.
        # An empty Sequential traces away to the identity, so the graph has no extra node.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet: 3 stages of 16/32/64 channels, (depth - 2) / 6 blocks each."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise SpecError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)]
        layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Channels per conv, one list per stage; a 2x2 max pool follows each of the first three
# stages only. Three pools take an 8x8 input to 1x1, so stages 4 and 5 run at 1x1 there
# (3x3 convs with padding 1 are fine on 1x1). On 32x32 inputs stages 4 and 5 run at 4x4,
# which is exactly DepGraph's CIFAR VGG (from RepDistiller: it skips the fourth pool at
# 32px), i.e. the VGG19 the paper prunes (511M MACs at 32px, 10 classes).
_VGG_CFG: dict[int, list[list[int]]] = {
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}
_VGG_POOLED_STAGES = 3


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small images: conv3x3-BN-ReLU stages, global average pool, Linear."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in _VGG_CFG:
            raise SpecError(f"VGG depth must be one of {sorted(_VGG_CFG)}, got {depth}")
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, widths in enumerate(_VGG_CFG[depth]):
            for cout in widths:
                layers += [_conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            if stage < _VGG_POOLED_STAGES:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels)


def vgg11(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(11, num_classes, in_channels)


def vgg16(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(16, num_classes, in_channels)


def vgg19(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(19, num_classes, in_channels)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg19": vgg19,
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Build a registered network by name, e.g. ``get_model("resnet56", num_classes=100)``."""
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)

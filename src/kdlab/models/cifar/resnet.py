"""CIFAR ResNets of the CRD / RepDistiller benchmark (He et al., CVPR 2016, CIFAR variant).

resnet8 ... resnet110 use widths 16-16-32-64 and BasicBlocks, (depth - 2) / 6 blocks per
layer; resnet8x4 and resnet32x4 are four times wider (32-64-128-256), as in the KD tables.

Stage division (as in the FCFD authors' code): stage 0 = conv1 + bn1 + relu, stages 1..3 =
layer1..layer3; the head is global average pooling and ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: conv-BN-ReLU stem, three layers of BasicBlocks, pooling, fc."""

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(widths[0], widths[1], n, stride=1)
        self.layer2 = self._layer(widths[1], widths[2], n, stride=2)
        self.layer3 = self._layer(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_init(self)

    @staticmethod
    def _layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _staged(net: CifarResNet, num_classes: int, in_channels: int, input_size: int) -> Staged:
    return Staged(
        net,
        stem=[],
        stages=[["conv1", "bn1", "relu"], ["layer1"], ["layer2"], ["layer3"]],
        pre_pool=[],
        classifier=["fc"],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
        net = CifarResNet(depth, widths, num_classes, in_channels)
        return _staged(net, num_classes, in_channels, input_size)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, widths {'-'.join(map(str, widths))} (CRD benchmark)."
    MODELS.register(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register("resnet8x4", 8, (32, 64, 128, 256))
_register("resnet32x4", 32, (32, 64, 128, 256))

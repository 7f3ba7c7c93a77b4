"""ShuffleNet V2 (1x) for CIFAR as in the CRD / RepDistiller benchmark ("ShuffleV2").

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018, with the CIFAR changes of the CRD benchmark (Tian et al., ICLR 2020): a 1x1 conv
stem to 24 channels (no max-pool), three layers (one down-sampling unit, then 3, 7 and 3
basic units) of widths 116, 232, 464, a 1x1 conv to 1024 channels, global average pooling
and one linear layer. 1,355,528 parameters at 100 classes, as RepDistiller's
``ShuffleV2(num_classes=100)``.

Stage division (as in the FCFD authors' code): stage 0 = ``conv1`` + ``bn1`` + ``relu``,
stages 1 and 2 = ``layer1``, ``layer2``, stage 3 = ``layer3`` + ``conv2`` + ``bn2`` +
``relu2`` (the authors keep the final 1x1 conv inside the last stage); the head is global
average pooling and ``linear``. Every stage output is post-ReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.cifar.shufflenetv1 import ChannelShuffle
from kdlab.models.staged.view import Staged


def _pw(in_planes: int, planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 1, bias=False)


def _dw(planes: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)


class BasicUnit(nn.Module):
    """Channel split; one half passes, the other runs 1x1 - 3x3 depthwise - 1x1; concat, shuffle."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.split = half
        self.conv1 = _pw(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _dw(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pw(half, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = self.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input; their outputs are concatenated."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        mid = planes // 2
        # left branch: 3x3 depthwise (stride 2), 1x1
        self.conv1 = _dw(in_planes, 2)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = _pw(in_planes, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1, 3x3 depthwise (stride 2), 1x1
        self.conv3 = _pw(in_planes, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _dw(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _pw(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu(self.bn3(self.conv3(x)))
        right = self.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(nn.Module):
    """ShuffleNet V2 for small images: 1x1 stem, three layers, 1x1 conv, pool, fc."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
        stem_width: int = 24,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        planes = stem_width
        layers = []
        for width, n in zip(widths[:3], blocks):
            units = [DownUnit(planes, width)] + [BasicUnit(width) for _ in range(n)]
            layers.append(nn.Sequential(*units))
            planes = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(planes, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.flatten(self.avgpool(x)))


@MODELS.register("shufflev2")
def shufflev2(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
    """ShuffleNet V2 1x for CIFAR (RepDistiller's ``ShuffleV2``), four FCFD stages."""
    net = CifarShuffleNetV2(num_classes, in_channels)
    return Staged(
        net,
        stem=[],
        stages=[
            ["conv1", "bn1", "relu"],
            ["layer1"],
            ["layer2"],
            ["layer3", "conv2", "bn2", "relu2"],
        ],
        pre_pool=[],
        classifier=["linear"],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )

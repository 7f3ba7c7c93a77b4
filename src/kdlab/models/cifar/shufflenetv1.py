"""ShuffleNet (v1) for CIFAR as in the CRD / RepDistiller benchmark ("ShuffleV1").

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018, with the CIFAR changes of the CRD benchmark (Tian et al., ICLR 2020):
a 1x1 conv stem to 24 channels (no max-pool), three layers of 4, 8 and 4 bottleneck units
with 3 groups and output widths 240, 480, 960, global average pooling and one linear layer.
949,258 parameters at 100 classes, as RepDistiller's ``ShuffleV1(num_classes=100)``.

Stage division (as in the FCFD authors' code): stage 0 = ``conv1`` + ``bn1`` (before the
ReLU), stages 1..3 = ``layer1``..``layer3``; the head is ``relu`` (pre-pool), global average
pooling and ``linear``. As in the authors' code, each unit starts with the ReLU of its input
and ends without one, so every stage output is a pre-activation feature; the function is the
same as RepDistiller's, which applies the ReLU at the end of each unit instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.staged.view import Staged


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups: (g, C/g) -> (C/g, g) (ShuffleNet, Sec. 3.1)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ReLU, grouped 1x1 conv, shuffle, 3x3 depthwise conv, grouped 1x1 conv.

    Stride 1 adds the input; stride 2 concatenates a 3x3 average-pooled input, so the unit
    adds ``planes`` channels to ``in_planes``. ``first_groups`` is the group count of the
    first 1x1 conv (1 on the narrow stem output, as in the paper).
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int, groups: int, first_groups: int
    ) -> None:
        super().__init__()
        mid = planes // 4
        self.stride = stride
        # Not in place: the input is the previous unit's output, which callers may keep.
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        out = self.shuffle(self.relu(self.bn1(self.conv1(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return torch.cat([out, res], 1) if self.stride == 2 else out + res


class CifarShuffleNetV1(nn.Module):
    """ShuffleNet v1 for small images: 1x1 conv stem, three layers of shuffle units, pool, fc."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        stem_width: int = 24,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        planes = stem_width
        layers = []
        for i, (width, n) in enumerate(zip(widths, blocks)):
            units = []
            for j in range(n):
                if j == 0:  # stride 2: the unit's output is concatenated with its input
                    first_groups = 1 if i == 0 else groups
                    units.append(ShuffleUnit(planes, width - planes, 2, groups, first_groups))
                else:
                    units.append(ShuffleUnit(width, width, 1, groups, groups))
            layers.append(nn.Sequential(*units))
            planes = width
        self.layer1, self.layer2, self.layer3 = layers
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(self.relu(x))))


@MODELS.register("shufflev1")
def shufflev1(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
    """ShuffleNet v1 (3 groups) for CIFAR (RepDistiller's ``ShuffleV1``), four FCFD stages."""
    net = CifarShuffleNetV1(num_classes, in_channels)
    return Staged(
        net,
        stem=[],
        stages=[["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"]],
        pre_pool=["relu"],
        classifier=["linear"],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )

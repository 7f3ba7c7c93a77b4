"""Wide ResNets for CIFAR of the CRD / RepDistiller benchmark (Zagoruyko & Komodakis, BMVC 2016).

WRN-d-k: a 3x3 conv to 16 channels, three groups of (d - 4) / 6 pre-activation basic blocks
(BN-ReLU-conv, twice) with widths 16k, 32k, 64k, a final BN-ReLU, global average pooling and
one linear layer. No dropout (the benchmark trains with drop rate 0).

Stage division (as in the FCFD authors' code): stage 0 = ``conv1``, stages 1..3 =
``block1``..``block3``, where stage 3 also holds the final ``bn``; the head is ``relu``
(pre-pool), global average pooling and ``fc``. Every stage output is a pre-activation
feature (the next block starts with BN-ReLU).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (1x1 conv of the activated input
    when the width changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.relu(self.bn2(out)))
        # A changed width projects the activated input; otherwise the raw input is added.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-width for small images."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, stride=1)
        self.block2 = self._group(widths[1], widths[2], n, stride=2)
        self.block3 = self._group(widths[2], widths[3], n, stride=2)
        self.bn = nn.BatchNorm2d(widths[3])
        # Not in place: its input is the last stage output, which callers may keep.
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_init(self, linear="zero_bias")

    @staticmethod
    def _group(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [PreActBlock(in_planes, planes, stride)]
        layers += [PreActBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn(self.block3(self.block2(self.block1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(x))))


def _register(depth: int, width: int) -> None:
    name = f"wrn_{depth}_{width}"

    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
        net = WideResNet(depth, width, num_classes, in_channels)
        return Staged(
            net,
            stem=[],
            stages=[["conv1"], ["block1"], ["block2"], ["block3", "bn"]],
            pre_pool=["relu"],
            classifier=["fc"],
            input_shape=(in_channels, input_size, input_size),
            num_classes=num_classes,
        )

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{width} for CIFAR (CRD benchmark), four FCFD stages."
    MODELS.register(name)(build)


for _depth, _width in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _width)

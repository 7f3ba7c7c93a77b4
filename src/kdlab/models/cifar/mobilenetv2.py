"""MobileNetV2 for CIFAR as in the CRD / RepDistiller benchmark ("mobile_half").

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, with
the CIFAR changes of the CRD benchmark (Tian et al., ICLR 2020): width multiplier 0.5,
expansion 6, a stride-2 3x3 stem, strides (1, 1, 2, 2, 1, 2, 1) for the seven block groups
(overall stride 16), a 1x1 conv to 1280 channels, global average pooling and one linear
layer. 812,836 parameters at 100 classes, as RepDistiller's ``mobile_half(100)``.

Stage division (as in the FCFD authors' code, which has five stages for this network):
stage 0 = ``conv1`` (3x3 conv + BN, output before its ReLU), stage 1 = ``relu`` +
``blocks.0`` + ``blocks.1``, stage 2 = ``blocks.2``, stage 3 = ``blocks.3`` + ``blocks.4``,
stage 4 = ``blocks.5`` + ``blocks.6`` + ``conv2`` (1x1 conv + BN, before its ReLU); the head
is ``relu`` (pre-pool), global average pooling and ``classifier``. The ReLUs after the stem
and after ``conv2`` run at the start of the next part, so every stage output is a
pre-activation feature, as the authors' bridges expect.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged

# (expansion t, output channels c, blocks n, first stride s) of each block group.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(in_planes: int, planes: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(planes),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity shortcut when shapes agree."""

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for small images: stem, seven inverted-residual groups, 1x1 conv, pool, fc."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 0.5,
    ) -> None:
        super().__init__()
        planes = int(32 * width_mult)
        self.conv1 = _conv_bn(in_channels, planes, 3, stride=2)
        # Not in place: it reads stage outputs that callers keep (features(x).stages).
        self.relu = nn.ReLU()
        blocks = []
        for t, c, n, s in _SETTINGS:
            out_planes = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(planes, out_planes, s if i == 0 else 1, t))
                planes = out_planes
            blocks.append(nn.Sequential(*group))
        self.blocks = nn.ModuleList(blocks)
        self.last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn(planes, self.last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        he_init(self, linear="normal")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv1(x))
        for group in self.blocks:
            x = group(x)
        x = self.relu(self.conv2(x))
        return self.classifier(self.flatten(self.avgpool(x)))


@MODELS.register("mobilenetv2")
def mobilenetv2(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
    """MobileNetV2 x0.5 for CIFAR (RepDistiller's ``mobile_half``), five FCFD stages."""
    net = CifarMobileNetV2(num_classes, in_channels, width_mult=0.5)
    return Staged(
        net,
        stem=[],
        stages=[
            ["conv1"],
            ["relu", "blocks.0", "blocks.1"],
            ["blocks.2"],
            ["blocks.3", "blocks.4"],
            ["blocks.5", "blocks.6", "conv2"],
        ],
        pre_pool=["relu"],
        classifier=["classifier"],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )

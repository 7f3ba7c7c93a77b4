"""The CIFAR ResNet-50 of the CRD / RepDistiller benchmark (RepDistiller's ``resnetv2.ResNet50``).

He et al., CVPR 2016: bottleneck blocks (1x1, 3x3, 1x1 conv-BN, expansion 4) in four layers
of 3, 4, 6, 3 blocks with widths 64, 128, 256, 512 (outputs 256 ... 2048), strides 1, 2, 2, 2,
after a 3x3 stride-1 conv-BN-ReLU stem (no max pooling, for 32x32 inputs); global average
pooling and one linear layer. 23,705,252 parameters at 100 classes.

Stage division (as in the FCFD authors' ``resnetv2.py``, five stages): stage 0 = ``conv1`` +
``bn1`` + ``relu``, stages 1..4 = ``layer1``..``layer4``; the head is global average pooling
and ``linear``. Every stage output is post-ReLU.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, each conv-BN; shortcut projected when the
    shape changes; ReLU after the sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class CifarResNet50(nn.Module):
    """Bottleneck ResNet for small images (3x3 stem, no max pooling)."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, blocks: tuple[int, ...] = (3, 4, 6, 3)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        planes = 64
        for i, (n, width, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2),
                                                   strict=True)):
            layer = [Bottleneck(planes, width, stride)]
            planes = width * Bottleneck.expansion
            layer += [Bottleneck(planes, width) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(planes, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.flatten(self.avgpool(x)))


@MODELS.register("resnet50_cifar")
def resnet50_cifar(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
    """CIFAR ResNet-50 (RepDistiller's ``ResNet50``), five FCFD stages."""
    net = CifarResNet50(num_classes, in_channels)
    return Staged(
        net,
        stem=[],
        stages=[["conv1", "bn1", "relu"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
        classifier=["linear"],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )

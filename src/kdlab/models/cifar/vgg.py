"""VGG with batch norm for CIFAR, as in the CRD / RepDistiller benchmark.

Simonyan & Zisserman, ICLR 2015, with the CIFAR changes of the CRD benchmark (Tian et al.,
ICLR 2020): five conv blocks (3x3 conv-BN-ReLU, the last ReLU of each block taken out to the
network level), 2x2 max pooling between the first four, global average pooling and one
linear layer 512 -> classes (no fully connected stack). ``vgg8`` is configuration "S" (one
conv per block); vgg11/13/16/19 are configurations A/B/D/E. As in the reference, the pool
between blocks 3 and 4 runs only for inputs of 64 pixels or more.

Stage division (as in the FCFD authors' code, five stages): stage 0 = ``block0``, stage
i = ``relu`` + ``pool{i-1}`` + ``block{i}`` for i = 1..3, stage 4 = ``relu`` (+ ``pool3``
for inputs >= 64) + ``block4``; the head is ``relu`` (pre-pool), global average pooling and
``classifier``. Every stage output is pre-activation (after BN, before ReLU).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged

_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, without the final ReLU (the network applies it)."""
    layers: list[nn.Module] = []
    for w in widths:
        conv = nn.Conv2d(in_channels, w, 3, padding=1)
        layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG-BN for small images: five conv blocks, max pooling, global pooling, one linear layer."""

    def __init__(
        self,
        config: tuple[tuple[int, ...], ...],
        num_classes: int,
        in_channels: int = 3,
        pool_last: bool = False,
    ) -> None:
        super().__init__()
        self.pool_last = pool_last
        channels = in_channels
        for i, widths in enumerate(config):
            self.add_module(f"block{i}", _block(channels, widths))
            channels = widths[-1]
        for i in range(4):
            self.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
        # Not in place: its inputs are stage outputs, which callers may keep.
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)
        he_init(self, linear="normal")

    def forward(self, x: Tensor) -> Tensor:
        x = self.block0(x)
        x = self.block1(self.pool0(self.relu(x)))
        x = self.block2(self.pool1(self.relu(x)))
        x = self.block3(self.pool2(self.relu(x)))
        x = self.relu(x)
        if self.pool_last:
            x = self.pool3(x)
        x = self.relu(self.block4(x))
        return self.classifier(self.flatten(self.avgpool(x)))


def _register(name: str) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 32) -> Staged:
        pool_last = input_size >= 64
        net = CifarVGG(_CONFIGS[name], num_classes, in_channels, pool_last=pool_last)
        last = ["relu", "pool3", "block4"] if pool_last else ["relu", "block4"]
        return Staged(
            net,
            stem=[],
            stages=[
                ["block0"],
                ["relu", "pool0", "block1"],
                ["relu", "pool1", "block2"],
                ["relu", "pool2", "block3"],
                last,
            ],
            pre_pool=["relu"],
            classifier=["classifier"],
            input_shape=(in_channels, input_size, input_size),
            num_classes=num_classes,
        )

    build.__name__ = name
    build.__doc__ = f"{name} with BN for CIFAR (CRD benchmark), five FCFD stages."
    MODELS.register(name)(build)


for _name in _CONFIGS:
    _register(_name)

"""The deep-stem ResNets of the segmentation literature ("ResNet-v1s"), dilated to output stride 8.

The stem is three 3x3 convolutions instead of one 7x7 (He et al., "Bag of Tricks for Image
Classification with Convolutional Neural Networks", CVPR 2019, Sec. 4, "ResNet-C"): 3->64
(stride 2), 64->64, 64->128, each followed by BatchNorm and ReLU, then the 3x3 max pool. So
128 channels enter ``layer1``, whose first block gets a 1x1 projection shortcut (128 -> 64
for ResNet-18, 128 -> 256 for ResNet-101). This is the backbone of PSPNet's and DeepLab's
released code, of the SKD authors' and of CIRKD's (Yang et al., CVPR 2022) networks, whose
ImageNet checkpoints (``resnet18-imagenet.pth``, ``resnet101-imagenet.pth``) use the module
names below (``conv1..3``, ``bn1..3``, ``layer1..4`` with torchvision's block layout).

``layer3`` and ``layer4`` are dilated by 2 and 4 with stride 1
(:func:`~kdlab.tasks.segmentation.models.backbones.dilate_`: the first block keeps the rate of
the layer before in its strided 3x3 conv), the rule of CIRKD's dilated ``ResNetV1b``.
The blocks are torchvision's ``BasicBlock`` / ``Bottleneck`` (stride on the 3x3 conv).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from kdlab.tasks.segmentation.models.backbones import dilate_

#: block type and blocks per layer of each depth
DEPTHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}
#: the stem's modules in the order they run (the stage-0 names of the staged view)
STEM = ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "maxpool"]


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> tuple[nn.Conv2d,
                                                                            nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv, nn.BatchNorm2d(out_channels)


class DeepStemResNet(nn.Module):
    """A dilated deep-stem ResNet without pooling head: ``forward(x)`` is ``layer4``'s map at
    stride 8. Children are registered in running order, so
    :class:`~torchvision.models._utils.IntermediateLayerGetter` can read ``layer3`` / ``layer4``.
    """

    def __init__(self, depth: str, in_channels: int = 3) -> None:
        super().__init__()
        block, layers = DEPTHS[depth]
        self.conv1, self.bn1 = _conv_bn(in_channels, 64, stride=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(64, 64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _conv_bn(64, 128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        # torchvision's layer builder, fed 128 channels instead of the 7x7 stem's 64; its
        # convolutions get the He initialisation of torchvision's and CIRKD's ResNets
        maker = ResNet(block, list(layers))
        maker.inplanes = 128
        self.layer1 = maker._make_layer(block, 64, layers[0])
        self.layer2 = maker._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = maker._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = maker._make_layer(block, 512, layers[3], stride=2)
        for m in (*self.layer1.modules(), *self.layer2.modules(), *self.layer3.modules(),
                  *self.layer4.modules()):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        dilate_(self.layer3, 2)
        dilate_(self.layer4, 4)
        self.out_channels = 512 * block.expansion

    def forward(self, x):  # noqa: ANN001, ANN201 - a plain module's forward
        for child in self.children():
            x = child(x)
        return x

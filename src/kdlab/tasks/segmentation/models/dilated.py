"""The segmentation-KD literature's networks: dilated backbones at output stride 8.

The pairs of SKD (Liu et al., CVPR 2019), CWD (Shu et al., ICCV 2021) and CIRKD (Yang et al.,
CVPR 2022): a DeepLabV3-ResNet-101 teacher (``deeplabv3_resnet101``, torchvision's, which is
already output stride 8) and DeepLabV3 / PSPNet students on ResNet-18 and MobileNetV2, plus a
PSPNet-ResNet-101. The backbones are torchvision's classification networks, so torchvision's
ImageNet state dicts load into them (``pretrained`` = a local file, or ``True`` to download):

- ResNet-101: ``replace_stride_with_dilation=[False, True, True]`` (as torchvision's
  DeepLabV3). ResNet-18: torchvision refuses to dilate BasicBlocks, so layer3 and layer4 are
  converted after construction (:func:`~kdlab.tasks.segmentation.models.backbones.dilate_`, rates 2
  and 4, the first block of each keeping the previous rate), which is CIRKD's dilated ResNet-18.
- MobileNetV2: ``features.0-17`` (the 1x1 conv to 1280 channels is dropped, as in CIRKD), the
  blocks ``features.7-13`` dilated by 2 and ``features.14-17`` by 4, as CIRKD's
  ``MobileNetV2Dilated``; 320 output channels.

Stages: ResNets as the ImageNet ResNets (stage 0 = ``conv1 bn1 relu maxpool``, then
``layer1..4``; strides 4, 4, 8, 8, 8); MobileNetV2 as kdlab's ImageNet MobileNetV2 (stage 0 =
``features.0``, then ``features.1-3``, ``4-6``, ``7-13``, ``14-17``; strides 2, 4, 8, 8, 8).
The optional auxiliary head (``aux=True``) is torchvision's FCN head on stage 3 (layer3 /
``features.13``), as CIRKD's ``auxlayer`` on c3.

Heads: DeepLabV3 uses torchvision's ``DeepLabHead`` (ASPP rates 12/24/36, 256 channels, no
dropout before the classifier) like the torchvision teacher; PSPNet uses
:class:`~kdlab.tasks.segmentation.models.heads.PSPHead` at width 256 after ResNet-101 and 128
after ResNet-18. These are torchvision-based networks, not CIRKD's: CIRKD's ResNets have the
deep stem (``resnet*_v1s``: three 3x3 convs, 128 channels into layer1) and their own ImageNet
checkpoints; its DeepLabV3 heads are 128 wide for ResNet-18 and MobileNetV2 and 256 for
ResNet-101, with a dropout of 0.1 before the classifier; its PSPNet heads 128 (ResNet-18)
and 512 (ResNet-101); its pooled branches upsample with ``align_corners=True``. Those
networks are :mod:`~kdlab.tasks.segmentation.models.cirkd` (``*_cirkd``); these keep
torchvision's 7x7 stem so that torchvision's weights load.
"""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from kdlab.models.staged.view import Staged
from kdlab.tasks.segmentation.models.backbones import dilate_, load_backbone, replace_first_conv
from kdlab.tasks.segmentation.models.base import (
    SegmentationNet,
    register,
    stage_names,
    staged_view,
)
from kdlab.tasks.segmentation.models.heads import PSPHead
from kdlab.tasks.segmentation.models.torchvision_nets import RESNET_STAGES

MOBILENET_V2_STAGES = stage_names(
    "backbone", [[0], [1, 2, 3], [4, 5, 6], list(range(7, 14)), list(range(14, 18))])

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet101": (torchvision.models.resnet101,
                  torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}


def dilated_resnet(name: str, in_channels: int) -> nn.Module:
    """torchvision's ResNet ``name`` with layer3 / layer4 at stride 1, dilation 2 / 4."""
    factory, _ = _RESNETS[name]
    if name == "resnet18":
        net = factory(weights=None)
        dilate_(net.layer3, 2)
        dilate_(net.layer4, 4)
    else:
        net = factory(weights=None, replace_stride_with_dilation=[False, True, True])
    replace_first_conv(net, in_channels)
    return net


def dilated_mobilenet_v2(in_channels: int) -> nn.Module:
    """torchvision's MobileNetV2 with ``features.7-13`` dilated by 2 and ``14-18`` by 4."""
    net = torchvision.models.mobilenet_v2(weights=None)
    for i in range(7, 14):
        dilate_(net.features[i], 2)
    for i in range(14, len(net.features)):
        dilate_(net.features[i], 4)
    replace_first_conv(net.features, in_channels)
    return net


def _resnet_net(backbone: str, head: str, *, num_classes: int, in_channels: int,
                input_size: int, pretrained: bool | str | Path, aux: bool) -> Staged:
    resnet = dilated_resnet(backbone, in_channels)
    layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    last = resnet.layer4[-1].conv2.out_channels * (4 if backbone == "resnet101" else 1)
    if head == "psp":
        decoder: nn.Module = PSPHead(last, num_classes, 256 if last >= 2048 else 128)
    else:
        decoder = DeepLabHead(last, num_classes)
    net = SegmentationNet(IntermediateLayerGetter(resnet, layers), decoder,
                          FCNHead(last // 2, num_classes) if aux else None)
    if pretrained:
        load_backbone(net, backbone, _RESNETS[backbone][1], pretrained)
    return staged_view(net, stages=RESNET_STAGES, aux_stage=3, num_classes=num_classes,
                       in_channels=in_channels, input_size=input_size)


def _register_resnet(name: str, backbone: str, head: str, title: str) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
              pretrained: bool | str | Path = False, aux: bool = False) -> Staged:
        return _resnet_net(backbone, head, num_classes=num_classes, in_channels=in_channels,
                           input_size=input_size, pretrained=pretrained, aux=aux)

    register(name, build, f"{title}, dilated torchvision backbone (output stride 8), five "
                          "stages, decoder as the head.")


_register_resnet("pspnet_resnet18", "resnet18", "psp", "PSPNet-ResNet-18")
_register_resnet("pspnet_resnet101", "resnet101", "psp", "PSPNet-ResNet-101")
_register_resnet("deeplabv3_resnet18", "resnet18", "aspp", "DeepLabV3-ResNet-18")


def deeplabv3_mobilenetv2(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
                          pretrained: bool | str | Path = False, aux: bool = False) -> Staged:
    mobilenet = dilated_mobilenet_v2(in_channels)
    layers = {"17": "out", **({"13": "aux"} if aux else {})}
    net = SegmentationNet(IntermediateLayerGetter(mobilenet.features, layers),
                          DeepLabHead(320, num_classes),
                          FCNHead(96, num_classes) if aux else None)
    if pretrained:
        load_backbone(net, "mobilenet_v2", torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
                      pretrained, prefix="features.")
    return staged_view(net, stages=MOBILENET_V2_STAGES, aux_stage=3, num_classes=num_classes,
                       in_channels=in_channels, input_size=input_size)


register("deeplabv3_mobilenetv2", deeplabv3_mobilenetv2,
         "DeepLabV3-MobileNetV2, dilated torchvision backbone (output stride 8), five stages, "
         "decoder as the head.")

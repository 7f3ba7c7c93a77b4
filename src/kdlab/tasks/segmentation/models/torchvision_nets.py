"""torchvision's segmentation networks, staged without rewriting.

The networks are torchvision's own (``weights=None``, ``weights_backbone=None``); ``pretrained``
loads ImageNet weights into the backbone only (the decoder stays fresh): a local torchvision
``.pth`` / ``.safetensors`` state dict of the classification network, or ``True`` for
torchvision's download of the ``IMAGENET1K_V1`` weights these models default to.
``aux=True`` adds torchvision's auxiliary FCN head.

Stage divisions:

- ResNet-50/101 (``deeplabv3_*``, ``fcn_*``; output stride 8, layer3 and layer4 dilated by
  torchvision): as the ImageNet ResNets, stage 0 = ``conv1 bn1 relu maxpool``, stages 1..4 =
  ``layer1..4`` (strides 4, 4, 8, 8, 8). The auxiliary head reads stage 3 (layer3), as
  torchvision's.
- MobileNetV3-Large (``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``; dilated
  last group, output stride 16): torchvision's own C-blocks, the strided blocks it gathers in
  ``stage_indices``: stage 0 = ``features.0`` (stem), stages 1..5 end at ``features.2, 4, 7,
  13, 16`` (strides 2, 4, 8, 16, 16, 16; 16, 24, 40, 80, 160 and 960 channels). So stage 2
  is torchvision's "C2", the input of the auxiliary head and LRASPP's low-level branch.

Heads: DeepLabV3 / FCN: ``classifier.0-3`` are ``pre_pool`` (ASPP + 3x3 conv-BN-ReLU; FCN's
3x3 conv-BN-ReLU-dropout), ``classifier.4`` the 1x1 classifier. LRASPP's head reads stage 2 as
well, through a :class:`~kdlab.models.staged.view.Decoder`: its embedding is the gated high-level
branch (``cbr(high) * scale(high)``, upsampled to stage 2's size, 128 channels) concatenated with
stage 2's output (40 channels), and its classifier, ``high_classifier(e[:, :128]) +
low_classifier(e[:, 128:])``, is one 1x1 conv on that concatenation; ``run_from(k, f)`` for
``k > 2`` needs ``earlier={2: stage-2 output}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import segmentation as tvseg

from kdlab.errors import UserError
from kdlab.models.staged.view import Decoder, Staged
from kdlab.tasks.segmentation.models.backbones import load_backbone, replace_first_conv
from kdlab.tasks.segmentation.models.base import register, stage_names, staged_view

RESNET_STAGES = stage_names(
    "backbone", [["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"],
                 ["layer4"]])
MOBILENET_V3_STAGES = stage_names(
    "backbone", [[0], [1, 2], [3, 4], [5, 6, 7], list(range(8, 14)), [14, 15, 16]])
MOBILENET_V3_LOW = 2  # the stage LRASPP's low branch and the auxiliary head read

_RESNETS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}
_MOBILENET_V3 = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1


def _register_resnet_net(name: str, factory: Callable[..., nn.Module], backbone: str,
                         title: str) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
              pretrained: bool | str | Path = False, aux: bool = False) -> Staged:
        net = factory(weights=None, weights_backbone=None, num_classes=num_classes,
                      aux_loss=aux)
        replace_first_conv(net.backbone, in_channels)
        if pretrained:
            load_backbone(net, backbone, _RESNETS[backbone], pretrained)
        return staged_view(net, stages=RESNET_STAGES, aux_stage=3, num_classes=num_classes,
                           in_channels=in_channels, input_size=input_size)

    register(name, build, f"torchvision {title} (output stride 8), five ResNet stages, "
                          "decoder as the head.")


_register_resnet_net("deeplabv3_resnet50", tvseg.deeplabv3_resnet50, "resnet50",
                     "DeepLabV3-ResNet-50")
_register_resnet_net("deeplabv3_resnet101", tvseg.deeplabv3_resnet101, "resnet101",
                     "DeepLabV3-ResNet-101")
_register_resnet_net("fcn_resnet50", tvseg.fcn_resnet50, "resnet50", "FCN-ResNet-50")
_register_resnet_net("fcn_resnet101", tvseg.fcn_resnet101, "resnet101", "FCN-ResNet-101")


def _mobilenet_v3_net(net: nn.Module, in_channels: int, pretrained: bool | str | Path) -> None:
    replace_first_conv(net.backbone, in_channels)
    if pretrained:
        load_backbone(net, "mobilenet_v3_large", _MOBILENET_V3, pretrained, prefix="features.")


def deeplabv3_mobilenet_v3_large(*, num_classes: int, in_channels: int = 3,
                                 input_size: int = 512, pretrained: bool | str | Path = False,
                                 aux: bool = False) -> Staged:
    net = tvseg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                             num_classes=num_classes, aux_loss=aux)
    _mobilenet_v3_net(net, in_channels, pretrained)
    return staged_view(net, stages=MOBILENET_V3_STAGES, aux_stage=MOBILENET_V3_LOW,
                       num_classes=num_classes, in_channels=in_channels, input_size=input_size)


register("deeplabv3_mobilenet_v3_large", deeplabv3_mobilenet_v3_large,
         "torchvision DeepLabV3-MobileNetV3-Large (output stride 16), six C-block stages.")


def _lraspp_embed(net: nn.Module, high: Tensor, skips: list[Tensor]) -> Tensor:
    """LRASPP's decoder map: the gated high branch at the low stage's size, then that stage."""
    (low,) = skips
    head = net.classifier
    x = head.cbr(high) * head.scale(high)
    x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([x, low], dim=1)


def _lraspp_classify(net: nn.Module, embedding: Tensor) -> Tensor:
    """LRASPP's two 1x1 classifiers, one on each part of the embedding, summed."""
    head = net.classifier
    c = head.high_classifier.in_channels
    return head.low_classifier(embedding[:, c:]) + head.high_classifier(embedding[:, :c])


def lraspp_mobilenet_v3_large(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
                              pretrained: bool | str | Path = False,
                              aux: bool = False) -> Staged:
    if aux:
        raise UserError("lraspp_mobilenet_v3_large has no auxiliary head; drop aux or choose "
                        "deeplabv3_mobilenet_v3_large.")
    net = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=num_classes)
    _mobilenet_v3_net(net, in_channels, pretrained)
    decoder = Decoder(skips=(MOBILENET_V3_LOW,), embed=_lraspp_embed, classify=_lraspp_classify)
    return staged_view(
        net, stages=MOBILENET_V3_STAGES, aux_stage=None, num_classes=num_classes,
        in_channels=in_channels, input_size=input_size, decoder=decoder,
        pre_pool=["classifier.cbr", "classifier.scale"],
        classifier=["classifier.high_classifier", "classifier.low_classifier"],
    )


register("lraspp_mobilenet_v3_large", lraspp_mobilenet_v3_large,
         "torchvision LRASPP-MobileNetV3-Large (output stride 16); its head also reads stage 2.")

"""CIRKD's Cityscapes networks (winycg/CIRKD @ 48eb81b, the code of its 2022 README tables).

Yang et al., "Cross-Image Relational Knowledge Distillation for Semantic Segmentation", CVPR
2022. Its teacher and students, value for value, so that its checkpoints load and its
distillation experiments run on the same networks:

- ``deeplabv3_resnet18_cirkd`` / ``deeplabv3_resnet101_cirkd``: a deep-stem dilated ResNet
  (:mod:`~kdlab.tasks.segmentation.models.deep_stem`) and DeepLabV3's head at width 128
  (ResNet-18) / 256 (ResNet-101): ASPP (rates 12, 24, 36, image pooling, projection with
  dropout 0.5; torchvision's ``ASPP``), then a 3x3 conv-BN-ReLU, **dropout 0.1** and the 1x1
  classifier (``models/deeplabv3.py``). 13.61M parameters with the auxiliary head for
  ResNet-18, 61.12M for ResNet-101 (as CIRKD's modules).
- ``deeplabv3_mobilenetv2_cirkd``: MobileNetV2 ``features.0-17`` dilated as CIRKD's
  ``MobileNetV2Dilated`` (``features.7-13`` by 2, ``14-17`` by 4; 320 channels) and the same
  head at width 128 (``models/deeplabv3_mobile.py``); 3.23M parameters; CIRKD trains it
  without an auxiliary head.
- ``pspnet_resnet18_cirkd`` / ``pspnet_resnet101_cirkd``: pyramid pooling (bins 1, 2, 3, 6,
  each a 1x1 conv to ``in / 4``), a 3x3 conv to **128 (ResNet-18) / 512 (ResNet-101)**,
  dropout 0.1 and the classifier (``models/pspnet.py``).

The auxiliary head (``aux=True``) is the FCN head on ``layer3`` (3x3 conv to ``in / 4``, BN,
ReLU, dropout 0.1, 1x1), CIRKD's ``auxlayer``. ``Features.embedding`` is the head's map after
its dropout: the feature CIRKD's SKD and CWD distil (``x_feat_after_aspp``).

``align_corners`` (default True, CIRKD's everywhere) is used by the pooled branches (PSPNet's
pyramid; ASPP's image pooling upsamples a 1x1 map, where it changes nothing) and by the
plain forward's upsampling; the task's loss and evaluation take theirs from the
segmentation task's ``align_corners`` option.

``pretrained``: a local file only (CIRKD publishes no download kdlab could fetch): one of the
ImageNet backbones its README links (``resnet18-imagenet.pth``, ``resnet101-imagenet.pth``,
``mobilenetv2-imagenet.pth``; the decoder stays fresh), or one of CIRKD's trained networks
(e.g. its teacher ``deeplabv3_resnet101_citys_best_model.pth``), renamed by
:mod:`~kdlab.tasks.segmentation.models.cirkd_weights`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

from kdlab.errors import UserError
from kdlab.models.imagenet import _read_state_dict
from kdlab.models.staged.view import Staged
from kdlab.tasks.segmentation.models.base import (
    SegmentationNet,
    register,
    stage_names,
    staged_view,
)
from kdlab.tasks.segmentation.models.cirkd_weights import is_segmentation_checkpoint, to_kdlab
from kdlab.tasks.segmentation.models.deep_stem import STEM, DeepStemResNet
from kdlab.tasks.segmentation.models.dilated import MOBILENET_V2_STAGES, dilated_mobilenet_v2
from kdlab.tasks.segmentation.models.heads import PSPHead

#: head widths of CIRKD's decoders, by backbone
DEEPLAB_WIDTH = {"resnet18": 128, "resnet101": 256, "mobilenetv2": 128}
PSP_WIDTH = {"resnet18": 128, "resnet101": 512}
DEEP_STEM_STAGES = stage_names("backbone", [STEM, ["layer1"], ["layer2"], ["layer3"],
                                            ["layer4"]])


def deeplab_head(in_channels: int, num_classes: int, width: int) -> nn.Sequential:
    """CIRKD's DeepLabV3 head: ASPP (12/24/36) at ``width``, 3x3 conv-BN-ReLU, dropout 0.1,
    1x1 classifier."""
    return nn.Sequential(
        ASPP(in_channels, [12, 24, 36], out_channels=width),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(width, num_classes, 1))


def load_cirkd(net: SegmentationNet, path: str | Path, *, mobilenet: bool) -> None:
    """Load a CIRKD file (ImageNet backbone or trained network) into ``net``; tensors it leaves
    untouched are listed in ``net.kdlab_pretrained_skipped``."""
    state = _read_state_dict(path)
    own = net.state_dict()
    renamed = {}
    for key, value in state.items():
        new = to_kdlab(key, mobilenet=mobilenet)
        if new is not None and new in own:
            if own[new].shape != value.shape:
                raise UserError(f"{path}: {key} has shape {tuple(value.shape)} but this "
                                f"network's {new} has {tuple(own[new].shape)}; build the "
                                "network CIRKD trained (classes, backbone) or pass its file.")
            renamed[new] = value
    backbone = [k for k in own if k.startswith("backbone.")
                and not k.endswith("num_batches_tracked")]
    missing = [k for k in backbone if k not in renamed]
    if missing:
        kind = ("trained network" if is_segmentation_checkpoint(list(state))
                else "ImageNet backbone")
        raise UserError(f"{path} is not a CIRKD {kind} file for this network: it lacks "
                        f"{len(missing)} backbone tensor(s) ({', '.join(missing[:3])}); pass "
                        "the file CIRKD's README links for this backbone.")
    net.load_state_dict(renamed, strict=False)
    net.kdlab_pretrained_skipped = [k for k in own if k not in renamed
                                    and not k.endswith("num_batches_tracked")]


def _resnet_net(backbone: str, head: str, *, num_classes: int, in_channels: int,
                input_size: int, pretrained: bool | str | Path, aux: bool,
                align_corners: bool) -> Staged:
    resnet = DeepStemResNet(backbone, in_channels)
    last = resnet.out_channels
    layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    if head == "psp":
        decoder: nn.Module = PSPHead(last, num_classes, PSP_WIDTH[backbone],
                                     align_corners=align_corners)
    else:
        decoder = deeplab_head(last, num_classes, DEEPLAB_WIDTH[backbone])
    net = SegmentationNet(IntermediateLayerGetter(resnet, layers), decoder,
                          FCNHead(last // 2, num_classes) if aux else None,
                          align_corners=align_corners)
    if pretrained:
        load_cirkd(net, _path(pretrained), mobilenet=False)
    return staged_view(net, stages=DEEP_STEM_STAGES, aux_stage=3, num_classes=num_classes,
                       in_channels=in_channels, input_size=input_size)


def _path(pretrained: bool | str | Path) -> str | Path:
    if pretrained is True:
        raise UserError("CIRKD's weights cannot be downloaded by kdlab; pass the path of the "
                        "file CIRKD's README links (e.g. resnet18-imagenet.pth).")
    assert not isinstance(pretrained, bool)
    return pretrained


def _register_resnet(name: str, backbone: str, head: str, title: str) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
              pretrained: bool | str | Path = False, aux: bool = False,
              align_corners: bool = True) -> Staged:
        return _resnet_net(backbone, head, num_classes=num_classes, in_channels=in_channels,
                           input_size=input_size, pretrained=pretrained, aux=aux,
                           align_corners=align_corners)

    build.weights_from_file_only = True  # type: ignore[attr-defined]
    register(name, build, f"{title} as CIRKD's (deep-stem backbone, output stride 8); "
                          "loads CIRKD's weight files.")


_register_resnet("deeplabv3_resnet18_cirkd", "resnet18", "aspp", "DeepLabV3-ResNet-18")
_register_resnet("deeplabv3_resnet101_cirkd", "resnet101", "aspp", "DeepLabV3-ResNet-101")
_register_resnet("pspnet_resnet18_cirkd", "resnet18", "psp", "PSPNet-ResNet-18")
_register_resnet("pspnet_resnet101_cirkd", "resnet101", "psp", "PSPNet-ResNet-101")


def deeplabv3_mobilenetv2_cirkd(*, num_classes: int, in_channels: int = 3, input_size: int = 512,
                                pretrained: bool | str | Path = False, aux: bool = False,
                                align_corners: bool = True) -> Staged:
    mobilenet = dilated_mobilenet_v2(in_channels)
    layers = {"17": "out", **({"13": "aux"} if aux else {})}
    net = SegmentationNet(IntermediateLayerGetter(mobilenet.features, layers),
                          deeplab_head(320, num_classes, DEEPLAB_WIDTH["mobilenetv2"]),
                          FCNHead(96, num_classes) if aux else None,
                          align_corners=align_corners)
    if pretrained:
        load_cirkd(net, _path(pretrained), mobilenet=True)
    return staged_view(net, stages=MOBILENET_V2_STAGES, aux_stage=3, num_classes=num_classes,
                       in_channels=in_channels, input_size=input_size)


deeplabv3_mobilenetv2_cirkd.weights_from_file_only = True  # type: ignore[attr-defined]
register("deeplabv3_mobilenetv2_cirkd", deeplabv3_mobilenetv2_cirkd,
         "DeepLabV3-MobileNetV2 as CIRKD's (dilated, head width 128); loads CIRKD's weight "
         "files.")

"""Registered Faster R-CNN FPN detectors (torchvision's, used as they are).

Every builder takes ``num_classes`` = K, the number of object classes
(``DatasetInfo.num_classes``; labels ``1..K``), and builds torchvision's predictor with ``K +
1`` outputs, index 0 the background (torchvision's convention). COCO in kdlab keeps COCO's
category ids as labels (K = 90, as torchvision's COCO checkpoints), so those checkpoints load
whole.

- ``fasterrcnn_resnet{18,34,101}_fpn``: built as torchvision's ``resnet_fpn_backbone`` builds
  them (FrozenBatchNorm, FPN on ``layer1..layer4`` plus a max-pooled level, 256 channels) with
  torchvision's Faster R-CNN defaults (``fasterrcnn_resnet50_fpn`` is torchvision's model of
  that name, built as its builder builds it for pretrained weights);
  ``fasterrcnn_resnet50_fpn_v2`` (torchvision's builder, BatchNorm trained) and
  ``fasterrcnn_mobilenet_v3_large_fpn`` (torchvision's construction, FrozenBatchNorm) keep
  torchvision's single training size; and ``fasterrcnn_mobilenet_v2_fpn`` puts torchvision's
  ``mobilenet_backbone`` FPN on the stride-4..32 stages of MobileNetV2 (the FCFD authors'
  MobileNetV2 FPN reads the same four strides, but the *last* block of each - features 3, 6, 13,
  17 of their ``detection/model/backbone/mobilenetv2.py``, 24/32/96/320 channels - where
  torchvision's ``mobilenet_backbone`` reads the first block of each stride, 24/32/64/160
  channels; option ``fpn_taps: last`` reads theirs). The RPN keeps 1000 proposals per image
  after NMS in training (the Detectron2 setting of the FCFD authors; torchvision's default is
  2000). ResNet training sizes: the shorter side is drawn from Detectron2's 1x scales
  (640..800) scaled to ``input_size / 800``, at most ``1333 * input_size / 800`` long;
  evaluation uses ``input_size``.
- ``frcnn_tiny_r18`` / ``frcnn_tiny_r10`` / ``frcnn_tiny_r10_slim``: small CPU detectors for
  64x64 one-channel scenes: a ResNet of torchvision ``BasicBlock`` stages (2 or 1 blocks per
  stage, widths 32..256 or 16..128) after a 3x3 stride-2 stem, a 64-channel FPN, an RPN and ROI
  head set for 10-28 px objects (:class:`TinyHeads`: three anchor sizes per level, RPN positive
  IoU 0.5, FPN Eq. 1 with torchvision's s0 = 224 and only the levels it can assign at this input
  size, 32 sampled ROIs per image, a 5x5 ROIAlign grid), few proposals, a 256-wide box head,
  BatchNorm trained from scratch, and no resize (``min_size = max_size = input_size``). Options
  (``model.student_options``): ``roi_output_size``, ``roi_sampling_ratio``, ``rois_per_image``.
  ``r10`` has ``r18``'s FPN, RPN and ROI head shapes (the inheriting strategy applies, as
  ResNet-101 -> ResNet-50); ``r10_slim`` does not.

Normalisation: the loaders normalise, so the detectors' ``GeneralizedRCNNTransform`` has
``image_mean = 0`` and ``image_std = 1`` (see :mod:`kdlab.tasks.detection.models.detector`),
unless the pixel options below make a detector normalise raw pixels itself.

Detectron2's function (opt-in options of the ResNet and MobileNetV2 FPN builders, defaults
torchvision's; :mod:`kdlab.tasks.detection.models.detector_options`): ``input_format``,
``pixel_mean``, ``pixel_std`` (the detector normalises raw 0..255 pixels itself),
``stride_in_1x1`` (ResNet-50/101), ``anchors: detectron2``, ``box_pooler: roialignv2``,
``losses: detectron2`` (Detectron2's training losses), and for small test detectors
``width_per_group``, ``fpn_channels``, ``box_head_dim``.

``pretrained``: a local file: a Detectron2 ``.pkl`` (a model-zoo detector, an MSRA ``R-50.pkl``
/ ``R-101.pkl`` or a converted backbone; read strictly by
:mod:`kdlab.tasks.detection.models.detectron2_weights`), a whole torchvision detector checkpoint
(keys ``backbone.*``, ``rpn.*``, ``roi_heads.*``; e.g. torchvision's COCO Faster R-CNN) or the
ImageNet classification weights of the backbone (torchvision's ``resnet50-*.pth``,
``mobilenet_v2-*.pth``); ``True`` is refused (no downloads at run time). Tensors of another
shape stay fresh and are listed in ``net.kdlab_pretrained_skipped``. With ImageNet backbone
weights the stem and ``layer1`` of a ResNet stay frozen (Detectron2's ``FREEZE_AT = 2``, the
authors' setting); MobileNetV2 trains every layer (their ``FREEZE_AT = 0``). The FrozenBatchNorm
detectors are meant to start from pretrained weights (from a random initialisation their
activations grow without bound); the tiny detectors train BatchNorm from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    mobilenet_backbone,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from kdlab.errors import UserError
from kdlab.models import MODELS
from kdlab.models.imagenet import _read_state_dict
from kdlab.tasks.detection.models.detector import Detector
from kdlab.tasks.detection.models.detector_options import DetectorOptions
from kdlab.tasks.detection.models.detectron2_weights import load_detectron2_weights

#: Detectron2's 1x training scales (shorter side) for an 800-pixel evaluation size
D2_TRAIN_SCALES = (640, 672, 704, 736, 768, 800)


def _sizes(input_size: int) -> dict[str, Any]:
    scale = input_size / 800
    return {"min_size": tuple(round(s * scale) for s in D2_TRAIN_SCALES),
            "max_size": round(1333 * scale)}


def _identity_norm(in_channels: int) -> dict[str, Any]:
    return {"image_mean": [0.0] * in_channels, "image_std": [1.0] * in_channels}


def _replace_first_conv(body: nn.Module, in_channels: int) -> None:
    """A fresh first convolution reading ``in_channels`` channels (3 is left as it is)."""
    if in_channels == 3:
        return
    for name, module in body.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size,
                            module.stride, module.padding, bias=module.bias is not None)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            parent, _, leaf = name.rpartition(".")
            setattr(body.get_submodule(parent) if parent else body, leaf, new)
            return


def load_detector_weights(net: FasterRCNN, pretrained: bool | str, name: str) -> None:
    """Load a local whole-detector or ImageNet-backbone checkpoint into ``net`` (see the
    module doc); tensors of another shape stay fresh."""
    if pretrained is True:
        raise UserError(f"{name} loads weights from a local file only; pass pretrained="
                        "'/path/to/weights.pth' (a torchvision detector or ImageNet backbone).")
    if str(pretrained).endswith(".pkl"):  # Detectron2 / MSRA weights, loaded strictly
        net.kdlab_pretrained_skipped = load_detectron2_weights(net, str(pretrained))
        return
    state = _read_state_dict(Path(str(pretrained)))
    whole = any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state)
    if not whole:  # ImageNet classification weights of the backbone body
        state = {"backbone.body." + k.removeprefix("features."): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"The weights in {pretrained} hold no tensor of {name}; pass a "
                        "torchvision checkpoint of this detector or of its backbone.")
    net.load_state_dict(usable, strict=False)
    net.kdlab_pretrained_skipped = [k for k in own if k not in usable
                                    and not k.endswith("num_batches_tracked")]


def _finish(net: FasterRCNN, name: str, in_channels: int, pretrained: bool | str,
            losses: str = "torchvision") -> Detector:
    _replace_first_conv(net.backbone.body, in_channels)
    if pretrained:
        load_detector_weights(net, pretrained, name)
    return Detector(net, losses)


def _register(name: str, build: Callable[..., Detector], doc: str) -> None:
    build.__name__ = name
    build.__doc__ = doc
    build.task = "detection"  # type: ignore[attr-defined]
    build.weights_from_file_only = True  # type: ignore[attr-defined]  # no downloads
    MODELS.register(name)(build)


# --------------------------------------------------------------------- ResNet FPN
def _resnet_body(depth: int, width_per_group: int, trainable_layers: int) -> nn.Module:
    """torchvision's ResNet-``depth`` with FrozenBatchNorm, its first layers frozen as
    ``resnet_fpn_backbone`` freezes them (``trainable_layers`` of layer4..conv1)."""
    if width_per_group != 64 and depth < 50:
        raise UserError(f"width_per_group is a bottleneck width; ResNet-{depth} has basic "
                        "blocks: leave it at 64.")
    extra = {"width_per_group": width_per_group} if width_per_group != 64 else {}
    body = getattr(torchvision.models, f"resnet{depth}")(weights=None,
                                                         norm_layer=FrozenBatchNorm2d, **extra)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    train += ["bn1"] if trainable_layers == 5 else []
    for name, param in body.named_parameters():
        if not name.startswith(tuple(train)):
            param.requires_grad_(False)
    return body


def _resnet_fpn(depth: int) -> None:
    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 800,
              pretrained: bool | str = False, input_format: str = "rgb",
              pixel_mean: list[float] | None = None, pixel_std: list[float] | None = None,
              stride_in_1x1: bool = False, anchors: str = "torchvision",
              box_pooler: str = "roialign", width_per_group: int = 64,
              fpn_channels: int = 256, box_head_dim: int = 1024,
              losses: str = "torchvision") -> Detector:
        opts = DetectorOptions(input_format, pixel_mean, pixel_std, stride_in_1x1, anchors,
                               box_pooler, fpn_channels, box_head_dim, in_channels, losses)
        body = _resnet_body(depth, width_per_group, 3 if pretrained else 5)
        if not opts.move_strides(body):
            raise UserError(f"ResNet-{depth} has no bottleneck; stride_in_1x1 is for "
                            "ResNet-50 / 101: set it to false.")
        widths = [body.inplanes // 8 * 2 ** i for i in range(4)]
        backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                                   widths, fpn_channels)
        net = FasterRCNN(backbone, rpn_post_nms_top_n_train=1000, **opts.heads(num_classes),
                         **_sizes(input_size), **_identity_norm(in_channels))
        opts.set_transform(net)
        return _finish(net, f"fasterrcnn_resnet{depth}_fpn", in_channels, pretrained,
                       opts.losses)

    _register(f"fasterrcnn_resnet{depth}_fpn", build,
              f"Faster R-CNN with a ResNet-{depth} FPN backbone (torchvision).")


for _depth in (18, 34, 50, 101):
    _resnet_fpn(_depth)


def fasterrcnn_resnet50_fpn_v2(*, num_classes: int, in_channels: int = 3, input_size: int = 800,
                               pretrained: bool | str = False) -> Detector:
    net = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=num_classes + 1,
        min_size=input_size, max_size=round(1333 * input_size / 800),
        **_identity_norm(in_channels))
    return _finish(net, "fasterrcnn_resnet50_fpn_v2", in_channels, pretrained)


def fasterrcnn_mobilenet_v3_large_fpn(*, num_classes: int, in_channels: int = 3,
                                      input_size: int = 800,
                                      pretrained: bool | str = False) -> Detector:
    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  norm_layer=FrozenBatchNorm2d,
                                  trainable_layers=3 if pretrained else 6)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    net = FasterRCNN(backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors,
                     rpn_score_thresh=0.05, min_size=input_size,
                     max_size=round(1333 * input_size / 800), **_identity_norm(in_channels))
    return _finish(net, "fasterrcnn_mobilenet_v3_large_fpn", in_channels, pretrained)


_register("fasterrcnn_resnet50_fpn_v2", fasterrcnn_resnet50_fpn_v2,
          "torchvision's fasterrcnn_resnet50_fpn_v2 as it is (BatchNorm, conv box head).")
_register("fasterrcnn_mobilenet_v3_large_fpn", fasterrcnn_mobilenet_v3_large_fpn,
          "torchvision's fasterrcnn_mobilenet_v3_large_fpn as it is built for its weights.")


#: the FCFD / ReviewKD authors' MobileNetV2 FPN inputs: the *last* block of each stride
#: (``features`` 3, 6, 13, 17 of their ``detection/model/backbone/mobilenetv2.py``, m2..m5)
MV2_LAST_TAPS = {"3": "0", "6": "1", "13": "2", "17": "3"}


def _mobilenet_v2_fpn_backbone(fpn_taps: str) -> BackboneWithFPN:
    """torchvision's ``mobilenet_backbone`` FPN (``fpn_taps: first``: the first block of each
    stride) or the same FrozenBatchNorm MobileNetV2 with the authors' taps (``last``)."""
    if fpn_taps not in ("first", "last"):
        raise UserError(f"Model option fpn_taps={fpn_taps!r} is not one of first, last.")
    if fpn_taps == "first":
        return mobilenet_backbone(backbone_name="mobilenet_v2", weights=None, fpn=True,
                                  norm_layer=FrozenBatchNorm2d, trainable_layers=6,
                                  returned_layers=[1, 2, 3, 4])
    body = torchvision.models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d).features
    return BackboneWithFPN(body, MV2_LAST_TAPS, [24, 32, 96, 320], 256)


def fasterrcnn_mobilenet_v2_fpn(*, num_classes: int, in_channels: int = 3,
                                input_size: int = 800, pretrained: bool | str = False,
                                input_format: str = "rgb", pixel_mean: list[float] | None = None,
                                pixel_std: list[float] | None = None,
                                anchors: str = "torchvision", box_pooler: str = "roialign",
                                fpn_taps: str = "first", losses: str = "torchvision") -> Detector:
    opts = DetectorOptions(input_format, pixel_mean, pixel_std, anchors=anchors,
                           box_pooler=box_pooler, in_channels=in_channels, losses=losses)
    backbone = _mobilenet_v2_fpn_backbone(fpn_taps)
    net = FasterRCNN(backbone, rpn_post_nms_top_n_train=1000, **opts.heads(num_classes),
                     **_sizes(input_size), **_identity_norm(in_channels))
    opts.set_transform(net)
    return _finish(net, "fasterrcnn_mobilenet_v2_fpn", in_channels, pretrained, opts.losses)


_register("fasterrcnn_mobilenet_v2_fpn", fasterrcnn_mobilenet_v2_fpn,
          "Faster R-CNN with a MobileNetV2 FPN on its stride 4..32 stages (torchvision).")


# --------------------------------------------------------------------- tiny CPU detectors
class TinyResNet(nn.Sequential):
    """A 3x3 stride-2 conv stem and four stages of torchvision BasicBlocks (strides 2, 2, 2,
    2): outputs at strides 4, 8, 16, 32, named ``layer1``..``layer4`` like a ResNet."""

    def __init__(self, widths: tuple[int, ...], blocks: int, in_channels: int) -> None:
        layers: dict[str, nn.Module] = {
            "conv1": nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            "bn1": nn.BatchNorm2d(widths[0]),
            "relu": nn.ReLU(inplace=True),
        }
        planes = widths[0]
        for i, width in enumerate(widths, start=1):
            down = nn.Sequential(nn.Conv2d(planes, width, 1, 2, bias=False),
                                 nn.BatchNorm2d(width))
            stage = [BasicBlock(planes, width, stride=2, downsample=down)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            layers[f"layer{i}"] = nn.Sequential(*stage)
            planes = width
        super().__init__()
        for key, module in layers.items():
            self.add_module(key, module)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


TINY_FPN_CHANNELS = 64
#: anchor sizes per FPN level (strides 4..64) of the tiny detectors: 3, 4 and 5 strides wide
#: (12, 16, 20 px on the stride-4 level; 24, 32, 40 on stride 8, ...), so that a scene item
#: (10-28 px) has an anchor of about its size on a grid fine enough for its position
TINY_ANCHORS = tuple((3 * s, 4 * s, 5 * s) for s in (4, 8, 16, 32, 64))


@dataclass(frozen=True)
class TinyHeads:
    """The RPN and ROI-head settings of the tiny detectors (see :func:`tiny_detector`).

    ``canonical_scale``: FPN Eq. 1's s0, in input pixels: torchvision's 224 (a 224-pixel box
    is pooled from the stride-16 level, 14 cells per side). The level a box is pooled from
    depends on its size in pixels and on the strides, not on the image size, so the tiny
    detectors keep it. ``rpn_fg_iou``: the RPN's positive IoU (0.7 in torchvision; 0.5 here,
    where boxes of 12-28 pixels sit on a grid of 4-8 pixels). ``rois_per_image`` /
    ``roi_positive_fraction``: the ROI head's sample per image (torchvision: 512 at 0.25; a
    scene holds 2-6 objects). ``roi_output_size`` / ``roi_sampling_ratio``: the ROIAlign grid
    and its samples per bin and axis (torchvision: 7 and 2). A scene item spans 3-7 cells of
    the stride-4 level, so a 5 x 5 grid with one bilinear sample per bin reads every cell;
    with 32 ROIs this makes the teacher's CPU step 2.2x faster than 7 x 7, ratio 2 and 64
    ROIs (``benchmarks/results/detection_step_cpu.md``)."""

    anchor_sizes: tuple[tuple[int, ...], ...] = TINY_ANCHORS
    rpn_fg_iou: float = 0.5
    rpn_bg_iou: float = 0.3
    canonical_scale: int = 224
    rois_per_image: int = 32
    roi_positive_fraction: float = 0.5
    roi_output_size: int = 5
    roi_sampling_ratio: int = 1
    pooled_levels: tuple[str, ...] | None = None  # None: those Eq. 1 can assign (see below)


def pooled_levels(input_size: int, canonical_scale: int, canonical_level: int = 4
                  ) -> tuple[str, ...]:
    """The FPN levels (names ``"0"``..``"3"`` = strides 4..32) that FPN Eq. 1 can assign to
    a box no larger than the ``input_size``-pixel image: from the finest up to that of an
    image-sized box (``"0"`` alone for a 64-pixel canvas, where every box is below 112 px)."""
    top = math.floor(canonical_level + math.log2(input_size / canonical_scale) + 1e-6)
    return tuple(str(k - 2) for k in range(2, min(max(top, 2), 5) + 1))


def tiny_detector(widths: tuple[int, ...], blocks: int, *, num_classes: int, in_channels: int,
                  input_size: int, heads: TinyHeads | None = None) -> Detector:
    """A small Faster R-CNN FPN for ``input_size``-pixel scenes (no resize)."""
    h = heads or TinyHeads()
    body = TinyResNet(widths, blocks, in_channels)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                               list(widths), TINY_FPN_CHANNELS)
    anchors = AnchorGenerator(h.anchor_sizes, ((0.5, 1.0, 2.0),) * len(h.anchor_sizes))
    levels = h.pooled_levels or pooled_levels(input_size, h.canonical_scale)
    pool = MultiScaleRoIAlign(list(levels), output_size=h.roi_output_size,
                              sampling_ratio=h.roi_sampling_ratio,
                              canonical_scale=h.canonical_scale)
    rep = 256
    net = FasterRCNN(
        backbone, min_size=input_size, max_size=input_size, **_identity_norm(in_channels),
        rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=200, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50,
        rpn_fg_iou_thresh=h.rpn_fg_iou, rpn_bg_iou_thresh=h.rpn_bg_iou,
        rpn_batch_size_per_image=64, box_roi_pool=pool,
        box_head=TwoMLPHead(TINY_FPN_CHANNELS * h.roi_output_size ** 2, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        box_batch_size_per_image=h.rois_per_image,
        box_positive_fraction=h.roi_positive_fraction, box_detections_per_img=20,
    )
    return Detector(net)


def _tiny(name: str, widths: tuple[int, ...], blocks: int, doc: str) -> None:
    def build(*, num_classes: int, in_channels: int = 1, input_size: int = 64,
              pretrained: bool | str = False, roi_output_size: int = TinyHeads.roi_output_size,
              roi_sampling_ratio: int = TinyHeads.roi_sampling_ratio,
              rois_per_image: int = TinyHeads.rois_per_image) -> Detector:
        heads = TinyHeads(roi_output_size=roi_output_size,
                          roi_sampling_ratio=roi_sampling_ratio, rois_per_image=rois_per_image)
        det = tiny_detector(widths, blocks, num_classes=num_classes, in_channels=in_channels,
                            input_size=input_size, heads=heads)
        if pretrained:
            load_detector_weights(det.net, pretrained, name)
        return det

    _register(name, build, doc)


_tiny("frcnn_tiny_r18", (32, 64, 128, 256), 2,
      "Small CPU Faster R-CNN FPN: ResNet-18 layout at half width (teacher of the scenes).")
_tiny("frcnn_tiny_r10", (32, 64, 128, 256), 1,
      "Small CPU Faster R-CNN FPN: one block per stage, frcnn_tiny_r18's widths.")
_tiny("frcnn_tiny_r10_slim", (16, 32, 64, 128), 1,
      "Small CPU Faster R-CNN FPN: one block per stage at quarter width.")

__all__ = ["TinyHeads", "TinyResNet", "load_detector_weights", "pooled_levels", "tiny_detector"]

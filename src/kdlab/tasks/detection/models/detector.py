"""A two-stage detector as kdlab sees it: torchvision's Faster R-CNN, used as it is.

:class:`Detector` wraps a ``torchvision.models.detection.FasterRCNN`` (``.net``, what
``kdlab export`` writes) and runs its public modules one by one - ``transform``,
``backbone`` (body + FPN), ``rpn``, ``roi_heads`` - so that a training step exposes what
distillation on FPN features needs (FCFD App. D): the FPN feature dict, the image sizes after
the detector's resize, the proposals the ROI head sampled and their matched targets, and the
ROI head's outputs on them. The detector's losses are torchvision's own (``fastrcnn_loss`` and
the RPN's), computed exactly as ``GeneralizedRCNN.forward`` does for a box-only detector, or,
with ``losses="detectron2"``, Detectron2's
(:mod:`~kdlab.tasks.detection.models.detector_losses`).

:func:`roi_lens` is the "lens" of FCFD for detection: a detector's ROI head (box pooler + box
head + predictor) run on *any* FPN feature dict for given proposals, returning class logits
and box deltas without a loss or post-processing.

Inputs: images are already normalised by kdlab's loaders, so every detector built by
:mod:`kdlab.tasks.detection.models.builders` has ``image_mean = 0`` and ``image_std = 1`` in its
``GeneralizedRCNNTransform`` (an identity normalisation); the transform still resizes (its
``min_size`` / ``max_size``) and pads the batch. An exported detector therefore expects
images normalised with the dataset's mean and std, like every kdlab export. A detector built
with Detectron2's pixel options (``input_format``, ``pixel_mean``, ``pixel_std``;
:mod:`kdlab.tasks.detection.models.pixel_format`) normalises raw 0..255 RGB pixels itself, as
Detectron2's models do; :meth:`Detector.input_from` hands a teacher the student's batch in the
teacher's own format.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from kdlab.errors import UserError
from kdlab.tasks.detection.models.detector_losses import (
    LOSSES,
    Detectron2LossRPN,
    detectron2_fastrcnn_loss,
)
from kdlab.tasks.detection.models.pixel_format import (
    PixelFormat,
    PixelTransform,
    convert_batch,
    pixel_format_of,
)

Targets = list[dict[str, Tensor]]


@dataclass
class DetectionOutput:
    """What a detector's training pass returns (:meth:`Detector.features`).

    ``losses``: the detector's own losses (RPN objectness and box, ROI classifier and box).
    ``fpn``: the FPN feature dict (``"0"``..``"3"`` and ``"pool"`` for torchvision's FPN).
    ``images``: the resized, padded batch the backbone saw (so a teacher can see the same).
    ``image_sizes``: each image's (H, W) after the resize, before padding.
    ``proposals``: per image, the proposals the ROI head sampled (with the ground-truth boxes
    added, as torchvision does); ``labels`` their matched classes (0 = background) and
    ``regression_targets`` their encoded box targets.
    ``logits`` / ``box_deltas``: the ROI head's class logits ``(R, K + 1)`` and box deltas
    ``(R, 4 (K + 1))`` on those proposals, concatenated over the images (None outside
    training).
    ``gt_boxes``: per image, the ground-truth boxes the detector trained on, in the resized
    frame of ``images`` (``(x1, y1, x2, y2)``; crowd and empty boxes left out), as its RPN and
    ROI head matched them (FGFI's imitation mask is built from them).
    ``pixel_format``: how ``images`` were normalised (None: the loader's normalisation only).
    """

    losses: dict[str, Tensor]
    fpn: OrderedDict[str, Tensor]
    images: Tensor
    image_sizes: list[tuple[int, int]]
    proposals: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    regression_targets: list[Tensor] = field(default_factory=list)
    logits: Tensor | None = None
    box_deltas: Tensor | None = None
    gt_boxes: list[Tensor] = field(default_factory=list)
    pixel_format: PixelFormat | None = None


def roi_lens(
    roi_heads: RoIHeads, fpn: dict[str, Tensor], proposals: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    """A detector's ROI head on any FPN feature dict: ``(class logits, box deltas)``.

    FCFD App. D, Eq. 12: ``<p(x, r), delta(x, r)> = ROIH(r, F)``. The box pooler reads the
    levels it was built for (``featmap_names``), so ``fpn`` must hold them with the shapes of
    the detector's own FPN outputs for these ``image_sizes``.
    """
    x = roi_heads.box_roi_pool(fpn, list(proposals), list(image_sizes))
    x = roi_heads.box_head(x)
    return roi_heads.box_predictor(x)


def _training_targets(targets: Targets) -> Targets:
    """What torchvision trains on: boxes and labels, without crowd regions (COCO's
    ``iscrowd``, counted only by evaluation) and without empty boxes."""
    out = []
    for t in targets:
        boxes, labels = t["boxes"], t["labels"]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if "iscrowd" in t:
            keep &= t["iscrowd"] == 0
        out.append({"boxes": boxes[keep].float(), "labels": labels[keep].long()})
    return out


class Detector(nn.Module):
    """torchvision's Faster R-CNN (``.net``) with access to its FPN features and ROI head.

    ``forward(images)`` is the plain detector: in eval mode a list of
    ``{"boxes", "scores", "labels"}`` per image (boxes in input pixels). ``features(images,
    targets)`` is the training pass of :class:`DetectionOutput`. ``images`` is a
    ``(B, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors (sizes may differ).
    ``losses``: whose training losses the detector computes, ``"torchvision"`` or
    ``"detectron2"`` (:mod:`~kdlab.tasks.detection.models.detector_losses`; for the latter its
    RPN becomes a :class:`Detectron2LossRPN`, with the same parameters).
    """

    def __init__(self, net: FasterRCNN, losses: str = "torchvision") -> None:
        super().__init__()
        roi = net.roi_heads
        if roi.has_mask() or roi.has_keypoint():
            raise UserError("kdlab distils box detectors only; use a Faster R-CNN without mask "
                            "or keypoint heads.")
        if losses not in LOSSES:
            raise UserError(f"Detector losses={losses!r} is not one of {', '.join(LOSSES)}.")
        if losses == "detectron2":
            net.rpn = Detectron2LossRPN(net.rpn)
        self.losses = losses
        self.net = net

    # ----------------------------------------------------------------- parts
    @property
    def roi_heads(self) -> RoIHeads:
        return self.net.roi_heads

    @property
    def fpn_channels(self) -> int:
        """Channels of every FPN level."""
        return int(self.net.backbone.out_channels)

    @property
    def fpn_levels(self) -> list[str]:
        """Names of the FPN outputs, in order (``"0"``..``"3"``, ``"pool"`` by default)."""
        backbone = self.net.backbone
        try:
            names = list(backbone.body.return_layers.values())
            extra = backbone.fpn.extra_blocks
        except AttributeError:
            raise UserError("kdlab distils detectors with a torchvision BackboneWithFPN; "
                            "build the detector with an FPN backbone.") from None
        if isinstance(extra, LastLevelMaxPool):
            names.append("pool")
        elif isinstance(extra, LastLevelP6P7):
            names += ["p6", "p7"]
        elif extra is not None:
            raise UserError(f"Unknown FPN extra block {type(extra).__name__}; use torchvision's "
                            "LastLevelMaxPool or LastLevelP6P7.")
        return [str(n) for n in names]

    @property
    def roi_levels(self) -> list[str]:
        """The FPN levels the ROI head's box pooler reads (those of its ``featmap_names`` that
        the FPN has: torchvision's default pooler names four, a MobileNetV3 FPN has two)."""
        names = self.net.roi_heads.box_roi_pool.featmap_names
        return [n for n in self.fpn_levels if n in names]

    @property
    def num_classes(self) -> int:
        """Object classes K (the predictor has K + 1 outputs, 0 = background)."""
        return int(self.net.roi_heads.box_predictor.cls_score.out_features) - 1

    # ----------------------------------------------------------------- passes
    def forward(self, images: Tensor | Sequence[Tensor],
                targets: Targets | None = None) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """The torchvision detector: detections in eval mode, its loss dict in training (with
        Detectron2's losses, those of :meth:`features`: torchvision's ROI head computes its
        own)."""
        if self.losses == "detectron2" and self.training and targets is not None:
            return self.features(images, targets).losses
        if targets is not None:
            targets = _training_targets(targets)
        return self.net(list(images), targets)

    @property
    def normalises_itself(self) -> bool:
        """Whether this detector reads raw pixels and normalises them (Detectron2's options)."""
        return isinstance(self.net.transform, PixelTransform)

    @property
    def pixel_format(self) -> PixelFormat:
        """How this detector normalises the loader's pixels (identity by default)."""
        return pixel_format_of(self.net.transform)

    def input_from(self, other: Detector | DetectionOutput, images: Tensor,
                   image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """A batch that ``other`` (a detector, or the output of its pass) transformed, as this
        detector would have normalised it (the same tensor when both read the same pixel
        format; see :func:`convert_batch`)."""
        src = other.pixel_format
        if src is None:  # an output that does not say: the loader's normalisation, as ours
            return images
        return convert_batch(images, image_sizes, src, self.pixel_format)

    def backbone(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """FPN features of an already transformed (resized, padded) batch."""
        return self.net.backbone(images)

    def lens(self, fpn: dict[str, Tensor], proposals: Sequence[Tensor],
             image_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """This detector's ROI head on ``fpn`` for ``proposals`` (:func:`roi_lens`)."""
        return roi_lens(self.net.roi_heads, fpn, proposals, image_sizes)

    def features(self, images: Tensor | Sequence[Tensor],
                 targets: Targets | None = None) -> DetectionOutput:
        """One training pass (``targets`` required): the detector's losses and internals.

        Runs ``transform -> backbone -> rpn -> roi_heads.select_training_samples -> lens ->
        fastrcnn_loss``: the steps of ``GeneralizedRCNN.forward`` and ``RoIHeads.forward`` for
        a box detector in training mode, with the sampled proposals kept (Detectron2's ROI
        losses in place of ``fastrcnn_loss`` with ``losses="detectron2"``).
        """
        if targets is None:
            raise UserError("A detector's training pass needs the targets (boxes and labels) "
                            "to sample its proposals; pass them to features().")
        net = self.net
        image_list, tv_targets = net.transform(list(images), _training_targets(targets))
        fpn = net.backbone(image_list.tensors)
        proposals, rpn_losses = net.rpn(image_list, fpn, tv_targets)
        proposals, _, labels, reg_targets = net.roi_heads.select_training_samples(
            proposals, tv_targets)
        logits, deltas = self.lens(fpn, proposals, image_list.image_sizes)
        roi_loss = detectron2_fastrcnn_loss if self.losses == "detectron2" else fastrcnn_loss
        loss_cls, loss_box = roi_loss(logits, deltas, labels, reg_targets)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box, **rpn_losses}
        return DetectionOutput(losses=losses, fpn=fpn, images=image_list.tensors,
                               image_sizes=list(image_list.image_sizes), proposals=proposals,
                               labels=labels, regression_targets=reg_targets, logits=logits,
                               box_deltas=deltas, gt_boxes=[t["boxes"] for t in tv_targets],
                               pixel_format=self.pixel_format)

    def anchor_grids(self, out: DetectionOutput) -> list[Tensor]:
        """The anchors of this detector's RPN on the batch of ``out``, per FPN level as
        ``(H, W, A, 4)`` boxes ``(x1, y1, x2, y2)`` in the resized frame (float32; the same
        for every image of the padded batch). Location-major with the anchor index inner, as
        the RPN orders them."""
        gen = self.net.rpn.anchor_generator
        maps = list(out.fpn.values())
        # the generator reads only the maps' sizes, dtype and device: empty float32 stand-ins
        # keep the anchors in float32 under autocast without copying the features
        shells = [m.new_empty((0, 0, *m.shape[-2:]), dtype=torch.float32) for m in maps]
        with torch.no_grad():
            flat = gen(ImageList(out.images, out.image_sizes), shells)[0]
        per = gen.num_anchors_per_location()
        sizes = [m.shape[-2] * m.shape[-1] * a for m, a in zip(maps, per, strict=True)]
        return [a.view(m.shape[-2], m.shape[-1], n, 4)
                for a, m, n in zip(flat.split(sizes), maps, per, strict=True)]


def check_detector(net: object, role: str) -> Detector:
    """``net`` as a :class:`Detector`, or a UserError naming its ``role``."""
    if not isinstance(net, Detector):
        raise UserError(f"The {role} is not a detector; pick a detection model for both "
                        "networks (`kdlab list models`, those of task detection).")
    return net


__all__ = ["DetectionOutput", "Detector", "check_detector", "roi_lens"]

"""The model options of kdlab's FPN Faster R-CNNs that make them compute Detectron2's function.

Each option is opt-in; its default is torchvision's (kdlab's) choice. With every Detectron2
value set, a detector loaded from a Detectron2 ``.pkl``
(:mod:`kdlab.tasks.detection.models.detectron2_weights`) computes what Detectron2 v0.6 computes
with that file (``tests/tasks/detection/test_detectron2_parity.py`` holds it):

- ``input_format`` (``rgb`` | ``bgr``), ``pixel_mean``, ``pixel_std``: Detectron2's
  ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` (0..255 scale, in the order the
  network reads); with them the detector normalises itself and reads raw RGB pixels
  (``data.pixel_mean: [0, 0, 0]``, ``data.pixel_std: [1, 1, 1]``), see
  :mod:`~kdlab.tasks.detection.models.pixel_format`;
- ``stride_in_1x1``: ``RESNETS.STRIDE_IN_1X1`` (MSRA bottlenecks);
- ``anchors: detectron2``: ``DefaultAnchorGenerator`` (unrounded float32 cell anchors, the
  levels' declared strides);
- ``box_pooler: roialignv2``: ``ROI_BOX_HEAD.POOLER_TYPE: ROIAlignV2`` with
  ``POOLER_SAMPLING_RATIO: 0`` and Detectron2's level assignment;
- ``losses: detectron2``: Detectron2's training losses (L1 box regression, the RPN's divided by
  ``RPN.BATCH_SIZE_PER_IMAGE`` x images), see
  :mod:`~kdlab.tasks.detection.models.detector_losses`;
  ``tests/tasks/detection/test_detector_losses.py`` holds them to Detectron2's ``RPN.losses``
  and ``FastRCNNOutputLayers.losses``;
- ``fpn_channels``, ``box_head_dim``: ``FPN.OUT_CHANNELS`` and ``ROI_BOX_HEAD.FC_DIM`` (256 and
  1024 in every config the authors use; other values make small detectors for tests).

See :mod:`~kdlab.tasks.detection.models.detectron2_parts` for what each changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from kdlab.errors import UserError
from kdlab.tasks.detection.models.detector_losses import LOSSES
from kdlab.tasks.detection.models.detectron2_parts import (
    D2AnchorGenerator,
    D2BoxPooler,
    stride_in_1x1,
)
from kdlab.tasks.detection.models.pixel_format import PixelFormat, PixelTransform

#: torchvision's (and Detectron2's) anchors of an FPN on strides 4..64: one size per level
FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_STRIDES = (4, 8, 16, 32, 64)
ROI_LEVELS = ["0", "1", "2", "3"]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"Model option {name}={value!r} is not one of {', '.join(allowed)}.")
    return value


@dataclass
class DetectorOptions:
    """The options of the module doc, checked; ``in_channels`` is the detector's input."""

    input_format: str = "rgb"
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    stride_in_1x1: bool = False
    anchors: str = "torchvision"
    box_pooler: str = "roialign"
    fpn_channels: int = 256
    box_head_dim: int = 1024
    in_channels: int = 3
    losses: str = "torchvision"

    def __post_init__(self) -> None:
        _choice("input_format", self.input_format, ("rgb", "bgr"))
        _choice("losses", self.losses, LOSSES)
        _choice("anchors", self.anchors, ("torchvision", "detectron2"))
        _choice("box_pooler", self.box_pooler, ("roialign", "roialignv2"))
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise UserError(f"Model option {name} needs {self.in_channels} values (one per "
                                f"input channel), got {value}.")
        if self.pixel_std is not None and any(v <= 0 for v in self.pixel_std):
            raise UserError(f"Model option pixel_std must be > 0, got {self.pixel_std}.")
        if min(self.fpn_channels, self.box_head_dim) < 1:
            raise UserError("Model options fpn_channels and box_head_dim must be >= 1.")

    def move_strides(self, body: nn.Module) -> bool:
        """Apply ``stride_in_1x1`` to ``body``; False when it has no bottleneck to change."""
        return stride_in_1x1(body) > 0 if self.stride_in_1x1 else True

    def heads(self, num_classes: int) -> dict[str, Any]:
        """``FasterRCNN`` keyword arguments for the non-default parts (K object classes)."""
        kw: dict[str, Any] = {"num_classes": num_classes + 1}
        if self.anchors == "detectron2":
            kw["rpn_anchor_generator"] = D2AnchorGenerator(
                FPN_ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * 5, FPN_STRIDES)
        if self.box_pooler == "roialignv2":
            kw["box_roi_pool"] = D2BoxPooler(ROI_LEVELS, 7, FPN_STRIDES[:4])
        if self.box_head_dim != 1024:
            kw["box_head"] = TwoMLPHead(self.fpn_channels * 7 * 7, self.box_head_dim)
            kw["box_predictor"] = FastRCNNPredictor(self.box_head_dim, num_classes + 1)
            kw["num_classes"] = None
        return kw

    def pixel_format(self) -> PixelFormat | None:
        """The format the detector normalises with; None: kdlab's (the loader normalises)."""
        if self.input_format == "rgb" and self.pixel_mean is None and self.pixel_std is None:
            return None
        c = self.in_channels
        return PixelFormat(self.input_format == "bgr",
                           tuple(self.pixel_mean or [0.0] * c), tuple(self.pixel_std or [1.0] * c))

    def set_transform(self, net: FasterRCNN) -> None:
        """Give ``net`` a transform that normalises with :meth:`pixel_format` (if any)."""
        fmt = self.pixel_format()
        if fmt is None:
            return
        t = net.transform
        net.transform = PixelTransform(fmt, min_size=t.min_size, max_size=t.max_size,
                                       size_divisible=t.size_divisible,
                                       fixed_size=t.fixed_size)


__all__ = ["DetectorOptions"]

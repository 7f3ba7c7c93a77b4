"""Two-stage detectors: torchvision's Faster R-CNN FPN seen through :class:`Detector`.

>>> from kdlab.models import build_model
>>> det = build_model("frcnn_tiny_r10", num_classes=10, in_channels=1, input_size=64)
>>> det.fpn_channels, det.num_classes
(64, 10)
"""

from kdlab.tasks.detection.models.detector import (
    DetectionOutput,
    Detector,
    check_detector,
    roi_lens,
)
from kdlab.tasks.detection.models.inherit import inherit_from

__all__ = ["DetectionOutput", "Detector", "check_detector", "inherit_from", "roi_lens"]

"""Hinton's KD (``kd``: :mod:`.kd`) and what ``kd`` runs on the other tasks: KD on every pixel
of a segmentation score map (:mod:`.segmentation`) and on a detector's ROI outputs
(:mod:`.detection`, FCFD App. D)."""

from kdlab.methods.kd.detection import KDDetection
from kdlab.methods.kd.kd import KD
from kdlab.methods.kd.segmentation import PixelKD

KD.variants = {"segmentation": PixelKD, "detection": KDDetection}

__all__ = ["KD", "KDDetection", "PixelKD"]

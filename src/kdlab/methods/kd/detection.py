"""KD on a detector's ROI-head outputs (the ``L_kd`` of FCFD App. D.1, on its own).

``L_kd = sum_{r in R} KL(p_t(x, r) || p_s(x, r)) + L2(delta_t(x, r), delta_s(x, r))``: the
student's ROI head on its own FPN features and the teacher's on the teacher's, both on the
student's sampled proposals R; temperature 1 and weights 1 as the FCFD authors (their
``KD_WEIGHT`` and ``ROIL2_WEIGHT``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods.base import Batch, Losses
from kdlab.methods.detection_base import DetectionDistiller, TeacherROI
from kdlab.methods.shared.detection import REDUCTIONS, roi_kl_loss, roi_l2_loss
from kdlab.tasks.detection.models import DetectionOutput


class KDDetection(DetectionDistiller):
    """KD on ROI outputs: detector losses + kd_weight * KL + kd_l2_weight * L2."""

    @dataclass
    class Config:
        ce_weight: float = setting(1.0, range=">= 0")  # the detector's own losses (L_task)
        kd_weight: float = setting(1.0, range=">= 0")  # KL of the class probabilities
        kd_l2_weight: float = setting(1.0, range=">= 0")  # L2 of the box deltas
        temperature: float = setting(1.0, range="> 0")
        # mean (authors' code) | sum (paper's formula)
        reduction: str = setting("mean", choices=REDUCTIONS)
        inherit: bool = False  # FCFD App. E: start from the teacher's FPN, RPN and ROI heads

    def losses(self, batch: Batch, student: DetectionOutput, teacher: TeacherROI) -> Losses:
        assert student.logits is not None
        c = self.cfg
        out: Losses = {}
        if c.kd_weight:
            out["kd"] = c.kd_weight * roi_kl_loss(student.logits, teacher.logits,
                                                  c.temperature, c.reduction)
        if c.kd_l2_weight:
            out["kd_l2"] = c.kd_l2_weight * roi_l2_loss(student.box_deltas, teacher.box_deltas,
                                                        c.reduction)
        return out

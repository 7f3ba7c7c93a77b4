"""FitNet-style FPN imitation: ``sum_k L2(F_t^k, B_st^k(F_s^k))`` over the FPN levels.

The ``L_app`` of FCFD App. D.1 alone (FitNets, Romero et al., ICLR 2015, on a detector's FPN
features, as the feature-distillation baselines of the FCFD paper's Table 3): one bridge per
FPN level (3x3 conv + BatchNorm, the authors' detection bridge), weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods.base import Batch, Losses
from kdlab.methods.detection_base import DetectionDistiller, TeacherROI
from kdlab.methods.shared.detection import fpn_app_loss, fpn_bridges
from kdlab.tasks.detection.models import DetectionOutput


class FitNetDetection(DetectionDistiller):
    """FPN imitation: detector losses + hint_weight * sum over FPN levels of L2."""

    @dataclass
    class Config:
        ce_weight: float = setting(1.0, range=">= 0")  # the detector's own losses (L_task)
        # sum_k L_app^k (the FCFD authors' APP_WEIGHT)
        hint_weight: float = setting(1.0, range=">= 0")
        inherit: bool = False  # FCFD App. E: start from the teacher's FPN, RPN and ROI heads

    def setup(self) -> None:
        super().setup()
        self.b_st = fpn_bridges(self.s_det, self.t_det, self.s_det.fpn_levels,
                                "student -> teacher")

    def losses(self, batch: Batch, student: DetectionOutput, teacher: TeacherROI) -> Losses:
        if not self.cfg.hint_weight:
            return {}
        bridged = {k: self.b_st[k](student.fpn[k]) for k in self.b_st}
        return {"hint": self.cfg.hint_weight * fpn_app_loss(bridged, teacher.fpn)}

"""FitNet-style FPN imitation: ``sum_k L2(F_t^k, B_st^k(F_s^k))`` over the FPN levels.

The ``L_app`` of FCFD App. D.1 alone (FitNets, Romero et al., ICLR 2015, on a detector's FPN
features, as the feature-distillation baselines of the FCFD paper's Table 3): one bridge per
FPN level (3x3 conv + BatchNorm, the authors' detection bridge), weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdlab.losses.detection import fpn_app_loss
from kdlab.methods.base import Losses
from kdlab.methods.detection.base import DetectionDistiller, TeacherROI
from kdlab.models.staged.view import StageInfo
from kdlab.nn.bridge import Bridge
from kdlab.tasks.detection.models import DetectionOutput, Detector


def fpn_bridges(src: Detector, dst: Detector, levels: list[str], what: str) -> nn.ModuleDict:
    """One :class:`~kdlab.nn.bridge.Bridge` per FPN level from ``src``'s channels to ``dst``'s:
    a 3x3 stride-1 conv and a BatchNorm (FPN outputs are not post-ReLU), Kaiming-initialised,
    as the FCFD authors' ``build_bridges``."""
    a = StageInfo(src.fpn_channels, 1, 1, post_relu=False)
    b = StageInfo(dst.fpn_channels, 1, 1, post_relu=False)
    return nn.ModuleDict({k: Bridge(a, b, where=f"{what} at FPN level {k}") for k in levels})


class FitNetDetection(DetectionDistiller):
    """FPN imitation: detector losses + hint_weight * sum over FPN levels of L2."""

    @dataclass
    class Config:
        ce_weight: float = 1.0  # the detector's own losses (L_task)
        hint_weight: float = 1.0  # sum_k L_app^k (the FCFD authors' APP_WEIGHT)
        inherit: bool = False  # FCFD App. E: start from the teacher's FPN, RPN and ROI heads

    def setup(self) -> None:
        super().setup()
        self.b_st = fpn_bridges(self.s_det, self.t_det, self.s_det.fpn_levels,
                                "student -> teacher")

    def losses(self, student: DetectionOutput, teacher: TeacherROI | None, targets: object,
               index: Tensor | None = None) -> Losses:
        assert teacher is not None
        if not self.cfg.hint_weight:
            return {}
        bridged = {k: self.b_st[k](student.fpn[k]) for k in self.b_st}
        return {"hint": self.cfg.hint_weight * fpn_app_loss(bridged, teacher.fpn)}

"""ReviewKD on a two-stage detector's FPN (what ``reviewkd`` runs on ``task: detection``).

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, as their
Detectron2 code distils Faster R-CNN FPN detectors (FCFD's Table 3 "Review" row): the review
covers every FPN output (p2-p6; torchvision's ``"0".."3"``, ``"pool"``), the same features the
student's RPN and ROI head read. One ABF per level, all ``mid_channels`` wide (the authors
hard-code 256, the FPN width: the default is the student's FPN width); visited deepest first,
each shallower level fusing the deeper one's residual; no output resize (student and teacher
maps have the same sizes); then HCL (full-resolution MSE + pooled 4/2/1 with weights
1, 1/2, 1/4, 1/8 over the levels smaller than the map) summed over the levels, with no
pooled-embedding level. The loss is ``weight * HCL`` from the first step (no warm-up in the
authors' detection code; ``warmup_epochs`` ramps it as the classification form does). Their
configs set the weight per pair: 1.2 (R101 -> R18), 1.0 (R101 -> R50), 2.0 (R50 -> MV2).

The ABF and HCL are the classification method's own (:mod:`.abf`, :mod:`.losses`); the
teacher's ROI head is not run (ReviewKD reads its FPN features only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdlab.core.settings import setting
from kdlab.methods.base import Batch, Losses
from kdlab.methods.detection_base import DetectionDistiller, TeacherROI
from kdlab.methods.reviewkd.abf import ABF, review
from kdlab.methods.reviewkd.losses import hcl_loss
from kdlab.tasks.detection.models import DetectionOutput


def fpn_abfs(levels: int, in_channels: int, mid_channels: int,
             out_channels: int) -> nn.ModuleList:
    """One ABF per FPN level, ``abfs[i]`` for level ``i`` (shallow to deep); the deepest one
    does not fuse (the authors' ``build_kd_trans``: every level ``in -> mid -> out``)."""
    return nn.ModuleList(ABF(in_channels, mid_channels, out_channels, fuse=i < levels - 1)
                         for i in range(levels))


class ReviewKDDetection(DetectionDistiller):
    """ReviewKD on FPN levels: detector losses + weight * HCL(ABF review of the student's
    FPN, the teacher's FPN)."""

    reads_teacher_roi = False

    @dataclass
    class Config:
        # review (HCL) loss weight (authors' REVIEWKD_LOSS_WEIGHT)
        weight: float = setting(1.0, range=">= 0")
        ce_weight: float = setting(1.0, range=">= 0")  # the detector's own losses
        # linear ramp of the weight; 0 in the authors' detection code
        warmup_epochs: int = setting(0, range=">= 0")
        # ABF width; None = the student's FPN channels
        mid_channels: int | None = setting(None, range=">= 1")
        hcl_levels: list[int] = setting(factory=lambda: [4, 2, 1], range=">= 1")  # pooled sizes
        inherit: bool = False  # FCFD App. E: start from the teacher's FPN, RPN and ROI heads

    def setup(self) -> None:
        super().setup()
        c = self.cfg
        mid = c.mid_channels or self.s_det.fpn_channels
        self.levels = self.s_det.fpn_levels
        self.abfs = fpn_abfs(len(self.levels), self.s_det.fpn_channels, mid,
                             self.t_det.fpn_channels)
        self._ramp = 1.0
        self.set_epoch(0, 1)

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        w = self.cfg.warmup_epochs
        self._ramp = 1.0 if w <= 0 else min((epoch + 1) / w, 1.0)

    def losses(self, batch: Batch, student: DetectionOutput, teacher: TeacherROI) -> Losses:
        c = self.cfg
        if not c.weight:
            return {}
        fused = review(self.abfs, [student.fpn[k] for k in self.levels],
                       [None] * len(self.levels))
        loss = hcl_loss(fused, [teacher.fpn[k] for k in self.levels], tuple(c.hcl_levels))
        return {"review": c.weight * self._ramp * loss}

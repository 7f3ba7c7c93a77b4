"""What every detection distiller shares: the teacher's pass on the student's proposals.

One training step (FCFD App. D.1): the student runs its detector's training pass
(:meth:`~kdlab.tasks.detection.models.Detector.features`: resize, backbone + FPN, RPN, proposal
sampling, ROI head, its own losses). The frozen teacher then sees *the same resized batch*
(``out.images``) and runs its ROI head on *the student's sampled proposals*: the set R that
every term of the step shares, as in the FCFD authors' code (``sampled_proposals`` of the
student's ``roi_heads`` in their ``detection/model/rcnn.py``). The teacher's RPN is never run.

The teacher's pass runs under ``torch.no_grad`` (not inference mode): its FPN features feed
the teacher-to-student bridges of FCFD's ``L_func'`` without a copy, and carry no gradient.
A method that reads only the teacher's FPN features (FGFI, ReviewKD) sets
``reads_teacher_roi = False``, and the teacher's ROI head is not run for it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.base import Distiller, Losses
from kdlab.tasks.detection.models import DetectionOutput, Detector, check_detector, inherit_from


@dataclass
class TeacherROI:
    """The teacher's FPN features of the student's batch and its ROI head's outputs on the
    student's sampled proposals (no gradient; None when the ROI head was not run)."""

    fpn: OrderedDict[str, Tensor]
    logits: Tensor | None
    box_deltas: Tensor | None


def teacher_roi(teacher: Detector, s: DetectionOutput, roi: bool = True) -> TeacherROI:
    """``teacher``'s FPN on the student's resized batch and (with ``roi``) its ROI head on
    the student's sampled proposals, under ``no_grad``."""
    with torch.no_grad():
        fpn = teacher.backbone(s.images)
        if not roi:
            return TeacherROI(fpn=fpn, logits=None, box_deltas=None)
        logits, deltas = teacher.lens(fpn, s.proposals, s.image_sizes)
    return TeacherROI(fpn=fpn, logits=logits, box_deltas=deltas)


class DetectionDistiller(Distiller):
    """Base of the detection methods: checks both networks are detectors, applies the
    inheriting strategy (``cfg.inherit``, FCFD App. E), and provides the default step
    ``ce_weight * (detector losses) + losses(student, teacher)``."""

    tasks = ("detection",)
    #: whether :meth:`losses` reads the teacher's ROI outputs (else only its FPN features)
    reads_teacher_roi: ClassVar[bool] = True

    @property
    def s_det(self) -> Detector:
        return self.student  # type: ignore[return-value]

    @property
    def t_det(self) -> Detector:
        return self.teacher  # type: ignore[return-value]

    def setup(self) -> None:
        check_detector(self.student, "student")
        check_detector(self.teacher, "teacher")
        if self.s_det.roi_levels != self.t_det.roi_levels:
            raise UserError(f"The student's ROI head reads FPN levels {self.s_det.roi_levels} "
                            f"but the teacher's {self.t_det.roi_levels}; pick detectors whose "
                            "ROI heads read the same levels.")
        if self.s_det.fpn_levels != self.t_det.fpn_levels:
            raise UserError(f"The student's FPN has levels {self.s_det.fpn_levels} and the "
                            f"teacher's {self.t_det.fpn_levels}; pick detectors with the same "
                            "FPN levels.")
        if self.s_det.num_classes != self.t_det.num_classes:
            raise UserError(f"The student detects {self.s_det.num_classes} classes and the "
                            f"teacher {self.t_det.num_classes}; use a teacher trained on this "
                            "data.")
        if getattr(self.cfg, "inherit", False):
            inherit_from(self.s_det, self.t_det)

    def teacher_roi(self, s: DetectionOutput) -> TeacherROI:
        """The teacher on the student's resized batch and sampled proposals (no gradient)."""
        return teacher_roi(self.t_det, s, roi=self.reads_teacher_roi)

    def forward(self, images: Any, targets: Any,
                index: Tensor | None = None) -> tuple[Tensor | None, Losses]:
        s = self.task.features(self.student, images, targets)
        t = self.teacher_roi(s)
        out: Losses = {}
        ce_weight = getattr(self.cfg, "ce_weight", 1.0)
        if ce_weight:
            out["ce"] = ce_weight * self.task_loss(s, targets)
        out.update(self.losses(s, t, targets, index))
        return s.logits, out

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
from typing import ClassVar

import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.base import Batch, Distiller
from kdlab.tasks.detection.models import DetectionOutput, Detector, check_detector, inherit_from


@dataclass
class TeacherROI:
    """The teacher's FPN features of the student's batch and its ROI head's outputs on the
    student's sampled proposals (no gradient; None when the ROI head was not run)."""

    fpn: OrderedDict[str, Tensor]
    logits: Tensor | None
    box_deltas: Tensor | None


def teacher_roi(teacher: Detector, s: DetectionOutput, roi: bool = True) -> TeacherROI:
    """``teacher``'s FPN on the student's resized batch (in the teacher's pixel format when the
    student normalises otherwise, :meth:`Detector.input_from`) and (with ``roi``) its ROI head
    on the student's sampled proposals, under ``torch.inference_mode``; the results are cloned
    out of it so that losses may save them for the backward pass (they carry no gradient)."""
    logits = deltas = None
    with torch.inference_mode():
        fpn = teacher.backbone(teacher.input_from(s, s.images, s.image_sizes))
        if roi:
            logits, deltas = teacher.lens(fpn, s.proposals, s.image_sizes)
    # clones made outside inference mode are normal tensors (without a gradient)
    return TeacherROI(fpn=OrderedDict((k, v.clone()) for k, v in fpn.items()),
                      logits=None if logits is None else logits.clone(),
                      box_deltas=None if deltas is None else deltas.clone())


class DetectionDistiller(Distiller):
    """Base of the detection methods: checks both networks are detectors, applies the
    inheriting strategy (``cfg.inherit``, FCFD App. E), and runs the teacher on the student's
    proposals (:meth:`teacher_pass`); the step is the Distiller's: ``ce_weight * (detector
    losses) + losses(batch, student, teacher)``."""

    tasks = ("detection",)
    #: whether :meth:`losses` reads the teacher's ROI outputs (else only its FPN features);
    #: read by :meth:`teacher_pass` and a detection ``combo``: else the ROI head does not run
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
        if self.s_det.normalises_itself != self.t_det.normalises_itself:
            raise UserError("One detector normalises raw pixels itself (model options "
                            "input_format / pixel_mean / pixel_std) and the other reads the "
                            "loader's normalised images; set the pixel options on both "
                            "networks (data.pixel_mean [0, 0, 0], pixel_std [1, 1, 1]) or on "
                            "neither.")
        if getattr(self.cfg, "inherit", False):
            inherit_from(self.s_det, self.t_det)

    def teacher_pass(self, batch: Batch, student: DetectionOutput) -> TeacherROI:
        """The teacher on the student's resized batch and sampled proposals (no gradient)."""
        assert self.teacher_source is not None
        return teacher_roi(self.teacher_source.network(), student, roi=self.reads_teacher_roi)

"""FRSKD+SLA: FRSKD with self-supervised label augmentation attached.

Ji et al., "Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge
Distillation", CVPR 2021, Sec. 4 ("FRSKD+SLA"), with the label augmentation of Lee, Hwang &
Shin, "Self-supervised Label Augmentation via Input Transformations", ICML 2020 (the pure
pieces are in :mod:`kdlab.methods.frskd.sla`). Everything follows the FRSKD authors' SLA code
(``classification/distill_loss/sla.py`` with ``--aux sla --aux_lamb 1``):

Each step runs the student and its BiFPNc self-teacher (:class:`~kdlab.methods.frskd.frskd.FRSKD`)
twice: on the batch ``x`` as it is, and on its four rotations ``x_r`` (0/90/180/270 degrees,
``4B`` images, the un-rotated copy included). Two *joint* heads (linear, ``4K`` outputs, the
SLA paper's joint classifier) read the rotated pass: one the student's pooled penultimate
feature, one the self-teacher's pooled top refined map. ``agg`` is a joint head's aggregated
prediction (the average over rotations of its joint logits at each rotation's own labels).
The terms (``T`` the FRSKD temperature, ``KL_T`` as in :func:`kdlab.methods.shared.logits.kd_loss`,
targets detached)::

    ce                     CE(student(x), y)
    self_teacher_ce        CE(self_teacher(x), y)
    joint_ce               CE(joint(student(x_r)), (y, r))
    self_teacher_joint_ce  CE(joint(self_teacher(x_r)), (y, r))
    sla_sd                 sla_weight * KL_T(agg_student || student(x))
    self_teacher_sla_sd    sla_weight * KL_T(agg_self_teacher || self_teacher(x))
    kd                     alpha * 1/2 * [KL_T(self_teacher(x) || student(x))
                                          + KL_T(agg_self_teacher || agg_student)]
    feat                   beta * sum_levels [1/5 AT(F, R) + 4/5 AT(F_r, R_r)]

The ``1/2`` and ``1/5, 4/5`` are the authors' choice: their FRSKD loss reads the batch of
``B`` single and ``B`` aggregated logits (for ``kd``) and of the ``B + 4B`` un-rotated and
rotated feature maps (for ``feat``) concatenated, each averaged over its rows. The
self-distillation terms ``sla_sd`` are SLA+SD (Lee et al.) at the FRSKD temperature with the
``T^2`` scale, as the authors; ``sla_temperature: 1`` gives the SLA paper's plain KL.
Gradient flow as FRSKD's: the self-teacher reads the student's features undetached (its CE
terms also train the student's backbone) unless ``detach_features: true``; the aggregated
*student* prediction is the student side of ``kd`` and so trains the student's joint head.

Inference: the network's own ``K``-way classifier (SLA+SD's single head, what the authors
evaluate) is the student that selects the best checkpoint and is exported, unchanged. The
joint heads stay in the distiller (its checkpoint, not the exported model);
``evaluated()`` also reports the self-teacher and ``student_aggregated``, the student's
aggregated joint prediction over the four rotations (SLA+AG, four passes per image).

Cost: the rotated pass sends ``B + 4B`` images through both networks; measured on CPU
(resnet8, 1x28x28, batch 64, one thread, 4 interleaved rounds of 2 steps, load average ~9
on 2 shared cores) a step takes 5.9-6.4x FRSKD's. Images must be square (a quarter turn
keeps the shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Losses
from kdlab.methods.frskd.frskd import FRSKD, SelfTeacherView
from kdlab.methods.frskd.sla import ROTATIONS, aggregate_joint_logits, rotate_batch, sla_joint_loss
from kdlab.methods.shared.attention import at_loss
from kdlab.methods.shared.logits import kd_loss
from kdlab.models.staged.view import Staged


class AggregatedView(nn.Module):
    """Images -> the student's aggregated joint prediction over the four rotations
    (``B x K`` logits; SLA's aggregated inference, for evaluation)."""

    def __init__(self, student: Staged, joint_head: nn.Linear) -> None:
        super().__init__()
        self.student = student
        self.joint_head = joint_head

    def forward(self, images: Tensor) -> Tensor:
        joint = self.joint_head(self.student.features(rotate_batch(images)).embedding)
        return aggregate_joint_logits(joint)


@dataclass
class RotatedPasses:
    """A pass on the batch (``plain``, whose logits the trainer reports) and one on its four
    rotations (``rotated``)."""

    plain: Any
    rotated: Any

    @property
    def logits(self) -> Tensor:
        return self.plain.logits


@METHODS.register("frskd_sla")
class FRSKDSLA(FRSKD):
    """FRSKD+SLA (Ji et al., CVPR 2021; Lee et al., ICML 2020): FRSKD with rotation joint
    labels and self-distillation from their aggregate."""

    @dataclass
    class Config(FRSKD.Config):
        # SLA+SD self-distillation weight (the authors' aux_lamb)
        sla_weight: float = setting(1.0, range=">= 0")
        # None: FRSKD's temperature (the authors); 1: SLA's
        sla_temperature: float | None = setting(None, range="> 0")

    def setup(self) -> None:
        _, h, w = self.student.input_shape
        if h != w:
            raise UserError(f"FRSKD+SLA rotates images by quarter turns, which needs square "
                            f"inputs; this student takes {h}x{w}: crop or resize to a square.")
        super().setup()  # FRSKD's checks and self-teacher, then the joint heads
        k = self.student.num_classes * ROTATIONS
        self.joint_head = nn.Linear(self.student.embedding_dim, k)
        self.self_teacher_joint_head = nn.Linear(self.self_teacher.widths[-1], k)

    def student_pass(self, batch: Batch) -> RotatedPasses:
        """The student on the batch and on its four rotations."""
        return RotatedPasses(self.student.features(batch.images),
                             self.student.features(rotate_batch(batch.images)))

    def teacher_pass(self, batch: Batch, student: RotatedPasses) -> RotatedPasses:
        """The self-teacher on both student passes: refined maps and logits of each."""
        return RotatedPasses(self._self_teacher(student.plain.stages[-self.levels :]),
                             self._self_teacher(student.rotated.stages[-self.levels :]))

    def losses(self, batch: Batch, student: RotatedPasses, teacher: RotatedPasses) -> Losses:
        c, targets = self.cfg, batch.targets
        out, rot = student.plain, student.rotated
        (refined, st_logits), (rot_refined, _) = teacher.plain, teacher.rotated
        feats, rot_feats = out.stages[-self.levels :], rot.stages[-self.levels :]
        joint = self.joint_head(rot.embedding)
        st_joint = self.self_teacher_joint_head(
            torch.flatten(F.adaptive_avg_pool2d(rot_refined[-1], 1), 1))
        agg, st_agg = aggregate_joint_logits(joint), aggregate_joint_logits(st_joint)
        losses: Losses = {
            "self_teacher_ce": F.cross_entropy(st_logits, targets),
            "joint_ce": sla_joint_loss(joint, targets),
            "self_teacher_joint_ce": sla_joint_loss(st_joint, targets),
        }
        t = c.temperature
        if c.sla_weight > 0:
            t_sd = c.sla_temperature if c.sla_temperature is not None else t
            losses["sla_sd"] = c.sla_weight * kd_loss(out.logits, agg.detach(), t_sd)
            losses["self_teacher_sla_sd"] = c.sla_weight * kd_loss(st_logits, st_agg.detach(),
                                                                   t_sd)
        if c.alpha > 0:
            losses["kd"] = c.alpha * 0.5 * (kd_loss(out.logits, st_logits.detach(), t)
                                            + kd_loss(agg, st_agg.detach(), t))
        if c.beta > 0:
            share = 1.0 / (1 + ROTATIONS)
            feat = sum(share * at_loss(f, r.detach()) + (1 - share) * at_loss(fr, rr.detach())
                       for f, r, fr, rr in zip(feats, refined, rot_feats, rot_refined,
                                               strict=True))
            losses["feat"] = c.beta * feat
        return losses

    def evaluated(self) -> dict[str, nn.Module]:
        """The student's own head (selects the best checkpoint), the self-teacher, and the
        student's aggregated joint prediction over the four rotations."""
        return {
            "student": self.student,
            "self_teacher": SelfTeacherView(self.student, self.self_teacher, self.levels),
            "student_aggregated": AggregatedView(self.student, self.joint_head),
        }

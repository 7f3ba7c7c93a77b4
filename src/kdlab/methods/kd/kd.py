"""Hinton's knowledge distillation: CE on labels + tau^2 KL to the teacher's soft outputs."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.logits import kd_loss
from kdlab.methods.teacher_source import TEACHER_BN_MODES, TeacherLogits
from kdlab.models.staged.view import Features


@METHODS.register("kd")
class KD(Distiller):
    """KD (Hinton et al., 2015): ce_weight * CE + kd_weight * tau^2 KL(p_t || p_s).

    Defaults are the FCFD paper's CIFAR setting: L_task = L_kd = 1, tau = 4 (ImageNet: tau = 1).
    On segmentation it runs per pixel (:class:`~kdlab.methods.kd.segmentation.PixelKD`).
    The CIFAR-100 KD recipes stand for the CRD benchmark's KD row and use its weights,
    ``ce_weight: 0.1, kd_weight: 0.9`` (RepDistiller ``-r 0.1 -a 0.9``); FCFD's own L_kd
    keeps 1 / 1 as its paper says. ``teacher_bn: batch`` runs the frozen teacher's BN on
    batch statistics (see :class:`~kdlab.methods.base.Distiller`); the references run KD's
    teacher in eval mode, the default.
    """

    tasks = ("classification",)
    uses_stages = False  # logits and pooled embeddings only: ViTs too
    teacher_reads = "logits"  # data.teacher_cache can stand in for the teacher

    @dataclass
    class Config:
        temperature: float = setting(4.0, range="> 0")
        ce_weight: float = setting(1.0, range=">= 0")
        kd_weight: float = setting(1.0, range=">= 0")
        # eval | batch (for the teacher-BN comparison)
        teacher_bn: str = setting("eval", choices=TEACHER_BN_MODES)

    def losses(self, batch: Batch, student: Features,
               teacher: Features | TeacherLogits) -> Losses:
        c = self.cfg
        if not c.kd_weight:
            return {}
        return {"kd": c.kd_weight * kd_loss(student.logits, teacher.logits, c.temperature)}

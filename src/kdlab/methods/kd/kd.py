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

    Defaults are the reference code's CIFAR setting: CE 0.1, KL 0.9, tau 4 (the CRD
    benchmark's KD row, RepDistiller ``scripts/run_cifar_distill.sh`` ``-r 0.1 -a 0.9``;
    mdistiller ``CFG.KD.LOSS``), which the CIFAR-100 KD recipes write out. The FCFD paper's
    own L_kd and the SimKD authors' KD script weigh CE and KL 1 / 1 (``ce_weight: 1.0,
    kd_weight: 1.0``, kdlab's former default; the quickstart's KD run); on ImageNet tau is 1.
    On segmentation it runs per pixel (:class:`~kdlab.methods.kd.segmentation.PixelKD`).
    ``teacher_bn: batch`` runs the frozen teacher's BN on batch statistics (see
    :class:`~kdlab.methods.base.Distiller`); the references run KD's teacher in eval mode,
    the default.
    """

    tasks = ("classification",)
    uses_stages = False  # logits and pooled embeddings only: ViTs too
    teacher_reads = "logits"  # data.teacher_cache can stand in for the teacher

    @dataclass
    class Config:
        temperature: float = setting(4.0, range="> 0")
        ce_weight: float = setting(0.1, range=">= 0")
        kd_weight: float = setting(0.9, range=">= 0")
        # eval | batch (for the teacher-BN comparison)
        teacher_bn: str = setting("eval", choices=TEACHER_BN_MODES)

    def losses(self, batch: Batch, student: Features,
               teacher: Features | TeacherLogits) -> Losses:
        c = self.cfg
        if not c.kd_weight:
            return {}
        return {"kd": c.kd_weight * kd_loss(student.logits, teacher.logits, c.temperature)}

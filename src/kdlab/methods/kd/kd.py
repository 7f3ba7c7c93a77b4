"""Hinton's knowledge distillation: CE on labels + tau^2 KL to the teacher's soft outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.methods.shared.logits import kd_loss
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
    teacher_logits_only = True  # data.teacher_cache can stand in for the teacher

    @dataclass
    class Config:
        temperature: float = 4.0
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        teacher_bn: str = "eval"  # eval | batch (for the teacher-BN comparison)

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        c = self.cfg
        teacher_logits = self.teacher_logits(images, index)
        logits = self.student(images)
        losses: Losses = {}
        if c.ce_weight:
            losses["ce"] = c.ce_weight * F.cross_entropy(logits, targets)
        if c.kd_weight:
            losses["kd"] = c.kd_weight * kd_loss(logits, teacher_logits, c.temperature)
        return logits, losses

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        c = self.cfg
        return {"kd": c.kd_weight * kd_loss(student.logits, teacher.logits, c.temperature)}

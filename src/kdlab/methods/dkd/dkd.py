"""Decoupled knowledge distillation: CE + warmed-up (alpha * TCKD + beta * NCKD)."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.logits import dkd_loss
from kdlab.methods.teacher_source import TeacherLogits
from kdlab.models.staged.view import Features


@METHODS.register("dkd")
class DKD(Distiller):
    """DKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

    Loss: ``ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD)`` with ``w`` rising
    linearly to 1 over the first ``warmup`` epochs (``min((epoch + 1) / warmup, 1)``, the
    authors' schedule with 1-based epochs). Defaults: the paper's CIFAR-100 setting (alpha 1,
    beta 8, tau 4, warm-up 20 epochs); the authors tune beta per pair (e.g. 6 for
    shufflev1 <- resnet32x4, 2 for ImageNet with alpha 0.5, tau 1).
    """

    uses_stages = False  # logits and pooled embeddings only: ViTs too
    teacher_reads = "logits"  # data.teacher_cache can stand in for the teacher

    @dataclass
    class Config:
        alpha: float = setting(1.0, range=">= 0")
        beta: float = setting(8.0, range=">= 0")
        temperature: float = setting(4.0, range="> 0")
        ce_weight: float = setting(1.0, range=">= 0")
        warmup: int = setting(20, range=">= 0")

    def setup(self) -> None:
        self.set_epoch(0, 1)

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        w = self.cfg.warmup
        self.kd_scale = 1.0 if w == 0 else min((epoch + 1) / w, 1.0)

    def losses(self, batch: Batch, student: Features,
               teacher: Features | TeacherLogits) -> Losses:
        c = self.cfg
        return {"dkd": self.kd_scale * dkd_loss(student.logits, teacher.logits, batch.targets,
                                                alpha=c.alpha, beta=c.beta,
                                                temperature=c.temperature)}

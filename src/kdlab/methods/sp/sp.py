"""Similarity-preserving KD: match the batch's pairwise similarity matrices."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.relations import sp_loss
from kdlab.models.staged.view import Features


@METHODS.register("sp")
class SP(Distiller):
    """SP (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

    ``ce_weight * CE + sp_weight * sum_l ||G_T^l - G_S^l||_F^2 / b^2`` over the stage
    pairs in ``stages`` (indices into both networks' stage lists; default the last stage,
    as in the paper's CIFAR experiments). ``sp_weight`` 3000 is the paper's gamma on CIFAR.
    """

    @dataclass
    class Config:
        sp_weight: float = setting(3000.0, range=">= 0")
        stages: list[int] = setting(factory=lambda: [-1], range="any")
        ce_weight: float = setting(1.0, range=">= 0")

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        total = 0.0
        for k in self.cfg.stages:
            try:
                s, t = student.stages[k], teacher.stages[k]
            except IndexError:
                raise UserError(
                    f"method.stages has {k}, but the networks have {len(student.stages)} and "
                    f"{len(teacher.stages)} stages; use indices valid for both."
                ) from None
            total = total + sp_loss(s, t)
        return {"sp": self.cfg.sp_weight * total}

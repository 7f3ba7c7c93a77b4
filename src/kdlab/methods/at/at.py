"""AT: attention transfer between student and teacher stage outputs.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. Loss::

    L = ce_weight * CE + beta * sum_j at_loss(F_s^j, F_t^j)

over stage pairs ``j``: the stage outputs after the stem (the residual stages), aligned from
the deepest when the networks have different numbers of them, as both benchmarks pair them
(RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``). A larger map is average-pooled to
the smaller size. Defaults are the CRD benchmark's / mdistiller's CIFAR setting: p = 2,
``beta * sum`` with beta = 1000. The paper's Eq. 2 writes ``beta / 2`` with beta = 1000,
i.e. ``beta: 500`` here; ``include_stem: true`` also pairs the stem outputs (kdlab's former
default).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.attention import at_loss
from kdlab.methods.shared.spatial import match_spatial
from kdlab.models.staged.pairs import stage_pairs
from kdlab.models.staged.view import Features


@METHODS.register("at")
class AT(Distiller):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) plus cross-entropy."""

    tasks = ("classification", "segmentation")  # backbone stage features either way

    @dataclass
    class Config:
        # the loss is beta * sum over stage pairs (paper's beta/2: 500)
        beta: float = setting(1000.0, range=">= 0")
        p: float = setting(2.0, range="> 0")  # attention map: mean over channels of |F|^p
        ce_weight: float = setting(1.0, range=">= 0")
        stages: list[int] | None = setting(None, range="any")  # None = every pair after the stem
        include_stem: bool = False  # also pair the stem outputs (kdlab's former default)

    def setup(self) -> None:
        assert self.teacher is not None
        self.pairs = stage_pairs(self.student, self.teacher, self.cfg.stages,
                                 include_stem=self.cfg.include_stem)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        total = student.logits.new_zeros(())
        for i, j in self.pairs:
            fs, ft = match_spatial(student.stages[i], teacher.stages[j])
            total = total + at_loss(fs, ft, self.cfg.p)
        return {"at": self.cfg.beta * total}

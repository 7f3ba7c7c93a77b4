"""VID: variational information distillation.

Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019. For each stage pair a regressor of 1x1 convolutions predicts, at every
position, the mean of a Gaussian over the teacher's feature from the student's feature; the
variance is one learned value per teacher channel, ``softplus(alpha_c) + eps``. The loss is
the Gaussian negative log-likelihood (:func:`kdlab.methods.vid.losses.vid_loss`), summed over pairs.
Defaults are the CRD benchmark's CIFAR-100 setting of VID: CE 1, VID 1, initial variance 5,
regressor width = teacher channels, the stage outputs after the stem (the benchmark's
``feat[1:-1]``; ``include_stem: true`` also pairs the stems, kdlab's former default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.spatial import match_spatial
from kdlab.methods.vid.losses import vid_loss
from kdlab.models.staged.pairs import stage_pairs
from kdlab.models.staged.view import Features


class VIDRegressor(nn.Module):
    """Per-position mean regressor (three 1x1 convs) and per-channel variance."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, init_variance: float,
                 eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_out, 1, bias=False))
        self.eps = eps
        # softplus(alpha) + eps = init_variance at the start
        self.alpha = nn.Parameter(
            torch.full((c_out,), math.log(math.expm1(init_variance - eps))))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(x), self.variance()


@METHODS.register("vid")
class VID(Distiller):
    """Variational information distillation (Ahn et al., CVPR 2019) plus CE."""

    @dataclass
    class Config:
        weight: float = setting(1.0, range=">= 0")
        ce_weight: float = setting(1.0, range=">= 0")
        init_variance: float = setting(5.0, range="> 0")
        eps: float = setting(1e-5, range="> 0")
        stages: list[int] | None = setting(None, range="any")  # None = every pair after the stem
        include_stem: bool = False  # also pair the stem outputs (kdlab's former default)

        def check(self, where: str, task: str | None = None) -> None:
            """The variance starts above its floor."""
            if self.init_variance <= self.eps:
                raise UserError(f"{where}.init_variance must be larger than eps "
                                f"({self.eps:g}), e.g. 5.0.")

    def setup(self) -> None:
        t = self.teacher
        assert t is not None
        self.pairs = stage_pairs(self.student, t, self.cfg.stages,
                                 include_stem=self.cfg.include_stem)
        self.regressors = nn.ModuleList(
            VIDRegressor(self.student.stage_info[i].channels, t.stage_info[j].channels,
                         t.stage_info[j].channels, self.cfg.init_variance, self.cfg.eps)
            for i, j in self.pairs
        )

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        total = student.logits.new_zeros(())
        for (i, j), reg in zip(self.pairs, self.regressors, strict=True):
            fs, ft = match_spatial(student.stages[i], teacher.stages[j])
            mean, var = reg(fs)
            total = total + vid_loss(mean, var, ft)
        return {"vid": self.cfg.weight * total}

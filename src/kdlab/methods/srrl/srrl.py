"""SRRL: knowledge distillation via softmax regression representation learning.

Yang, Martinez, Bulat & Tzimiropoulos, ICLR 2021 (compared in FCFD's ImageNet Table 2). The
student's last feature map goes through a connector ``r`` (1x1 conv + BN + ReLU to the
teacher's width, a training-only extra); the teacher's own head (pre-pool modules, pooling)
turns it into ``h_S``, which is matched to the teacher's representation ``h_T``
(``L_FM``), and the teacher's frozen classifier maps ``h_S`` to logits that must regress
the teacher's logits (``L_SR``)::

    L = ce_weight * CE + fm_weight * ||h_S - h_T||^2 + sr_weight * ||C_t(h_S) - z_t||^2

(mean squared differences). Defaults are the authors' released code
(``jingyang2017/KD_SRRL``, ImageNet): both weights 1, L2 for both terms, the teacher in eval
mode. Gradients reach the connector and the student through the teacher's head; the
teacher's parameters stay frozen. ``kdlab export`` writes the plain student (the connector
is only for training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.srrl.losses import srrl_feature_loss, srrl_softmax_regression_loss
from kdlab.models.staged.view import Features


class SRRLConnector(nn.Sequential):
    """Student -> teacher channels at the last feature map: 1x1 conv + BN + ReLU
    (conv init N(0, 2 / (k^2 * c_out)), BN weight 1, bias 0, as the authors)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
        nn.init.normal_(self[0].weight, 0.0, math.sqrt(2.0 / c_out))


@METHODS.register("srrl")
class SRRL(Distiller):
    """SRRL (Yang et al., ICLR 2021): CE + feature matching + softmax regression."""

    @dataclass
    class Config:
        ce_weight: float = setting(1.0, range=">= 0")
        fm_weight: float = setting(1.0, range=">= 0")  # L_FM
        sr_weight: float = setting(1.0, range=">= 0")  # L_SR

    def setup(self) -> None:
        assert self.teacher is not None
        s, t = self.student.stage_info[-1], self.teacher.stage_info[-1]
        if self.student.num_classes != self.teacher.num_classes:
            raise UserError(
                f"SRRL runs the teacher's classifier on the student's features: both must "
                f"predict the same classes (student {self.student.num_classes}, teacher "
                f"{self.teacher.num_classes})."
            )
        self.connector = SRRLConnector(s.channels, t.channels)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        assert self.teacher is not None
        c = self.cfg
        h_s = self.teacher.embed(self.connector(student.stages[-1]))
        out: Losses = {}
        if c.fm_weight:
            out["srrl_fm"] = c.fm_weight * srrl_feature_loss(h_s, teacher.embedding)
        if c.sr_weight:
            out["srrl_sr"] = c.sr_weight * srrl_softmax_regression_loss(
                self.teacher.classify(h_s), teacher.logits)
        return out

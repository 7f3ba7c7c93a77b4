"""CWD: channel-wise distillation for dense prediction.

Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021, §3.2: each
channel of the teacher's and the student's map is turned into a distribution over spatial
positions (softmax at temperature tau) and the student's is pulled to the teacher's by KL
(:func:`~kdlab.methods.cwd.losses.cwd_loss`). Applied to the score maps (``logits_weight``)
and/or to the decoder's feature before the final convolution (``feature_weight``; the
student's feature is first projected to the teacher's channels by a 1x1 convolution +
BatchNorm + ReLU, as in the authors' ``cwd_feat`` path).

Defaults are the authors' logits recipe (irfanICMLL/TorchDistiller, ``SemSeg-distill``:
README ``bash exp_cwd.sh channel kl 3 4``): weight 3, temperature 4, features off.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.cwd.losses import cwd_loss
from kdlab.models.staged.view import Features


@METHODS.register("cwd")
class CWD(Distiller):
    """Channel-wise distillation (Shu et al., ICCV 2021) on score maps and/or features."""

    tasks = ("segmentation",)

    @dataclass
    class Config:
        ce_weight: float = setting(1.0, range=">= 0")
        logits_weight: float = setting(3.0, range=">= 0")
        feature_weight: float = setting(0.0, range=">= 0")
        temperature: float = setting(4.0, range="> 0")

        def check(self, where: str, task: str | None = None) -> None:
            """One term at least is on."""
            if not (self.logits_weight or self.feature_weight):
                raise UserError(f"CWD has both terms off ({where}.logits_weight and "
                                "feature_weight are 0); set one of them above 0.")

    def setup(self) -> None:
        assert self.teacher is not None
        if self.cfg.feature_weight:
            c_s, c_t = self.student.embedding_dim, self.teacher.embedding_dim
            self.projection = nn.Sequential(
                nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU())

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        out: Losses = {}
        if c.logits_weight:
            out["cwd_logits"] = c.logits_weight * cwd_loss(student.logits, teacher.logits,
                                                           c.temperature)
        if c.feature_weight:
            feature = self.projection(student.embedding)
            out["cwd_feature"] = c.feature_weight * cwd_loss(feature, teacher.embedding,
                                                             c.temperature)
        return out

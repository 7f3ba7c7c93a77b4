"""Relational KD: distance- and angle-wise structure of a batch's embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.relations import rkd_angle_loss, rkd_distance_loss
from kdlab.models.staged.pairs import feature_at
from kdlab.models.staged.view import Features


@METHODS.register("rkd")
class RKD(Distiller):
    """RKD (Park et al., "Relational Knowledge Distillation", CVPR 2019).

    ``ce_weight * CE + distance_weight * L_RKD-D + angle_weight * L_RKD-A`` on ``layer``
    (default: the penultimate embedding; ``stage<k>`` uses a stage output, flattened).
    Weights 25 and 50 are the paper's (lambda_RKD-D = 25, lambda_RKD-A = 50).
    """

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        distance_weight: float = setting(25.0, range=">= 0")
        angle_weight: float = setting(50.0, range=">= 0")
        layer: str = "embedding"
        ce_weight: float = setting(1.0, range=">= 0")

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        s, t = feature_at(student, c.layer), feature_at(teacher, c.layer)
        out: Losses = {}
        if c.distance_weight:
            out["rkd_distance"] = c.distance_weight * rkd_distance_loss(s, t)
        if c.angle_weight:
            out["rkd_angle"] = c.angle_weight * rkd_angle_loss(s, t)
        return out

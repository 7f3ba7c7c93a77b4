"""Pixel-wise KD: Hinton's KD on every pixel of a segmentation score map.

What ``kd`` runs for the segmentation task (:meth:`kdlab.methods.kd.kd.KD.for_task`):
``tau^2 * KL(p_t || p_s)`` per pixel, averaged over the pixels and the batch
(:func:`~kdlab.methods.shared.dense.pixel_kl_loss`), on the score maps at the decoder's
resolution. Defaults are CIRKD's KD baseline (winycg/CIRKD, ``train_kd.py`` and
``losses/kd.py``): temperature 1, weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdlab.core.settings import setting
from kdlab.methods.base import Distiller, Losses
from kdlab.methods.kd.kd import KD
from kdlab.methods.shared.dense import pixel_kl_loss
from kdlab.models.staged.view import Features


class PixelKD(KD):
    """KD per pixel (Hinton et al., 2015, applied as in SKD §3.1's pixel-wise term)."""

    tasks = ("segmentation",)

    @dataclass
    class Config:
        temperature: float = setting(1.0, range="> 0")
        ce_weight: float = setting(1.0, range=">= 0")
        kd_weight: float = setting(1.0, range=">= 0")

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        return Distiller.forward(self, images, targets, index)

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        c = self.cfg
        return {"kd": c.kd_weight * pixel_kl_loss(student.logits, teacher.logits,
                                                  c.temperature)}

"""Pixel-wise KD: Hinton's KD on every pixel of a segmentation score map.

What ``kd`` runs for the segmentation task (:meth:`kdlab.methods.kd.kd.KD.for_task`):
``tau^2 * KL(p_t || p_s)`` per pixel, averaged over the pixels and the batch
(:func:`~kdlab.methods.shared.dense.pixel_kl_loss`), on the score maps at the decoder's
resolution. Defaults are CIRKD's KD baseline (winycg/CIRKD, ``train_kd.py`` and
``losses/kd.py``): temperature 1, weight 1. Like KD it reads only the teacher's logits (its
score maps); a teacher cache holds classification logits, not score maps, so a segmentation
run refuses ``data.teacher_cache`` (:mod:`kdlab.training.cache_source`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.methods.base import Batch, Losses
from kdlab.methods.kd.kd import KD
from kdlab.methods.shared.dense import pixel_kl_loss
from kdlab.methods.teacher_source import TeacherLogits
from kdlab.models.staged.view import Features


class PixelKD(KD):
    """KD per pixel (Hinton et al., 2015, applied as in SKD §3.1's pixel-wise term)."""

    tasks = ("segmentation",)

    @dataclass
    class Config:
        temperature: float = setting(1.0, range="> 0")
        ce_weight: float = setting(1.0, range=">= 0")
        kd_weight: float = setting(1.0, range=">= 0")

    def losses(self, batch: Batch, student: Features,
               teacher: Features | TeacherLogits) -> Losses:
        c = self.cfg
        return {"kd": c.kd_weight * pixel_kl_loss(student.logits, teacher.logits,
                                                  c.temperature)}

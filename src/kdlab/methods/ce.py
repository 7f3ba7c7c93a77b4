"""Plain supervised training: cross-entropy on the labels (teachers and baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses


@METHODS.register("ce")
class CrossEntropy(Distiller):
    """Cross-entropy training without a teacher (teachers and 'student alone' baselines)."""

    needs_teacher = False

    @dataclass
    class Config:
        label_smoothing: float = 0.0

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        logits = self.student(images)
        ce = F.cross_entropy(logits, targets, label_smoothing=self.cfg.label_smoothing)
        return logits, {"ce": ce}

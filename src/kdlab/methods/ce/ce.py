"""Plain supervised training: cross-entropy on the labels (teachers and baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses


@METHODS.register("ce")
class CrossEntropy(Distiller):
    """Cross-entropy training without a teacher (teachers and 'student alone' baselines)."""

    needs_teacher = False
    tasks = ("classification", "segmentation", "detection")

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        label_smoothing: float = setting(0.0, range="[0, 1)")  # classification only

        def check(self, where: str, task: str | None = None) -> None:
            """Label smoothing is for classification only."""
            if self.label_smoothing and task not in (None, "classification"):
                raise UserError(f"{where}.label_smoothing applies to classification only; "
                                f"remove it for task {task!r}.")

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        out = self.task.features(self.student, images, targets)
        if self.cfg.label_smoothing:
            ce = F.cross_entropy(out.logits, targets, label_smoothing=self.cfg.label_smoothing)
        else:
            ce = self.task_loss(out, targets)
        return out.logits, {"ce": ce}

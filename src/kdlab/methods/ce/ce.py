"""Plain supervised training: cross-entropy on the labels (teachers and baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import ANY_TASK, Batch, Distiller, Losses


@METHODS.register("ce")
class CrossEntropy(Distiller):
    """Cross-entropy training without a teacher (teachers and 'student alone' baselines)."""

    needs_teacher = False
    tasks = ANY_TASK  # the task's own loss, whatever the task

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        label_smoothing: float = setting(0.0, range="[0, 1)")  # classification only

        def check(self, where: str, task: str | None = None) -> None:
            """Label smoothing is for classification only."""
            if self.label_smoothing and task not in (None, "classification"):
                raise UserError(f"{where}.label_smoothing applies to classification only; "
                                f"remove it for task {task!r}.")

    def task_loss(self, out: Any, targets: Any) -> Tensor:
        if self.cfg.label_smoothing:
            return F.cross_entropy(out.logits, targets, label_smoothing=self.cfg.label_smoothing)
        return super().task_loss(out, targets)

    def losses(self, batch: Batch, student: Any, teacher: None) -> Losses:
        return {}  # the label loss alone (the template's ``ce``)

"""Image classification: integer labels, cross-entropy, top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.tasks.base import TASKS, Task


@TASKS.register("classification")
class Classification(Task):
    """Image classification: labels, cross-entropy, top-1 / top-5 accuracy.

    Targets ``(B,)`` int64 class indices; networks return ``(B, K)`` logits.
    """

    name = "classification"
    primary = "top1"
    train_score_name = "top1"

    def loss(self, out: Any, targets: Tensor) -> Tensor:
        return F.cross_entropy(out.logits, targets)

    def example_targets(self, batch: int, num_classes: int, size: tuple[int, int],
                        generator: torch.Generator, device: torch.device | str) -> Tensor:
        return torch.randint(0, num_classes, (batch,), generator=generator).to(device)

    def train_counts(self, outputs: Tensor, targets: Tensor) -> Tensor:
        hits = (outputs.detach().argmax(dim=1) == targets).sum()
        return torch.stack([hits.double(), torch.tensor(float(targets.numel()),
                                                        dtype=torch.float64,
                                                        device=targets.device)])

    def evaluate(self, net: nn.Module, loader: Iterable[Any], *, device: torch.device,
                 amp: str = "none") -> dict[str, float]:
        from kdlab.engine.evaluate import evaluate

        return {k: float(v) for k, v in evaluate(net, loader, device=device, amp=amp).items()}

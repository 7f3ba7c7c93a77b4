"""Image classification: integer labels, cross-entropy, top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.runtime.collectives import all_reduce_sum
from kdlab.runtime.precision import autocast
from kdlab.tasks.base import TASKS, Task
from kdlab.tasks.deploy import DeploySpec


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
        return {k: float(v) for k, v in
                classifier_metrics(net, loader, device=device, amp=amp).items()}

    def deploy(self, net: nn.Module, input_shape: tuple[int, ...]) -> DeploySpec:
        """The network as it is: ``images (batch, C, H, W) -> logits (batch, K)``, the batch
        free, the image size the one the network was built for."""
        c, h, w = input_shape
        k = self.num_classes or "K"
        return DeploySpec(net, ("logits",), {0: ("batch", 1)},
                          f"images float32 (batch, {c}, {h}, {w}) -> logits float32 (batch, {k})")


def classifier_metrics(
    model: nn.Module, loader: Iterable[Any], *, device: torch.device, amp: str = "none"
) -> dict[str, float | int]:
    """``{top1, top5, loss, images}`` of ``model`` (images -> logits) over ``loader``.

    Accuracy in percent, ``loss`` the mean cross-entropy; counts are summed over all ranks of
    a process group, so every rank gets the accuracy on the whole split. The model's
    training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, images
    try:
        with torch.inference_mode():
            for batch in loader:
                images, targets = batch[0].to(device), batch[1].to(device)
                with autocast(device, amp):
                    logits = model(images)
                logits = logits.float()
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hit = top.eq(targets[:, None])
                sums[0] += hit[:, 0].sum()
                sums[1] += hit.any(dim=1).sum()
                sums[2] += F.cross_entropy(logits, targets, reduction="sum").double()
                sums[3] += targets.numel()
    finally:
        model.train(was_training)
    all_reduce_sum(sums)
    n = max(int(sums[3].item()), 1)
    return {
        "top1": 100.0 * sums[0].item() / n,
        "top5": 100.0 * sums[1].item() / n,
        "loss": sums[2].item() / n,
        "images": int(sums[3].item()),
    }

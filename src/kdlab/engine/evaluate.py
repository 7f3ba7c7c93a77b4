"""Top-1 / top-5 accuracy and cross-entropy of a network on a loader, reduced over ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.engine.distributed import all_reduce_sum
from kdlab.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` in none | bf16 | fp16 (a null context for none)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise UserError(f"train.amp {amp!r} is not known; use none, bf16 or fp16.")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def evaluate(
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

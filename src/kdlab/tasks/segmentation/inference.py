"""Score maps of a segmentation network at the label resolution: whole image or sliding window.

A network's output may be a score tensor ``(B, K, h, w)`` (a
:class:`~kdlab.models.staged.view.Staged` view's forward), an object with ``logits`` (its
``Features``) or torchvision's ``{"out": ..., "aux": ...}``; it is at the decoder's resolution
and is upsampled bilinearly to the image size here (``align_corners=False`` unless the caller
says otherwise: the segmentation task's ``align_corners`` option).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def score_map(out: Any) -> Tensor:
    """The main score map of a network output (tensor, ``.logits`` or ``["out"]``)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return out["out"]
    return out.logits


def upsample(scores: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear to ``size`` (a no-op when already that size)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=align_corners)


def whole(net: nn.Module, images: Tensor, align_corners: bool = False) -> Tensor:
    """Score maps ``(B, K, H, W)`` of whole images."""
    return upsample(score_map(net(images)).float(), tuple(images.shape[-2:]), align_corners)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``0..size``: every ``stride``, the last one flush with the end."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return starts + [size - crop]


def sliding(net: nn.Module, images: Tensor, crop: tuple[int, int],
            stride: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Score maps ``(B, K, H, W)`` averaged over overlapping ``crop`` windows (images smaller
    than a window are zero-padded, i.e. with the mean, and the padding cut off again)."""
    b, _, h, w = images.shape
    ph, pw = max(crop[0] - h, 0), max(crop[1] - w, 0)
    padded = F.pad(images, (0, pw, 0, ph)) if ph or pw else images
    hh, ww = padded.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(1, 1, hh, ww, device=images.device)
    for y in window_starts(hh, crop[0], stride[0]):
        for x in window_starts(ww, crop[1], stride[1]):
            window = padded[:, :, y:y + crop[0], x:x + crop[1]]
            scores = whole(net, window, align_corners)
            if total is None:
                total = images.new_zeros(b, scores.shape[1], hh, ww, dtype=torch.float32)
            total[:, :, y:y + crop[0], x:x + crop[1]] += scores
            count[:, :, y:y + crop[0], x:x + crop[1]] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]

"""Batched augmentation as tensor ops on the device: random crop with zero padding, flip.

This is the standard small-image augmentation of the CIFAR literature (He et al., "Deep
Residual Learning", CVPR 2016, Sec. 4.2: 4-pixel padding, random 32x32 crop, horizontal flip)
done for a whole batch at once with one gather, so the device never waits on Python workers.
Random numbers are drawn on a CPU generator (see :mod:`kdlab.data.sampling`) and moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the original size from the image zero-padded by ``pad``; optional flip."""

    pad: int
    flip: bool = True

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Offsets ``dy``, ``dx`` in ``[0, 2 * pad]`` and flip flags for ``n`` samples."""
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        return offsets[0], offsets[1], flips

    def apply(self, images: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The views of ``images`` that the parameters ``(dy, dx, flip)`` of :meth:`draw`
        describe (one per image)."""
        dy, dx, flip = params
        return crop_flip(images, dy, dx, flip.bool(), self.pad)

    def describe(self) -> dict[str, object]:
        """The settings as plain values (a teacher soft-label cache records them)."""
        return {"kind": "crop_flip", "pad": self.pad, "flip": self.flip}


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Per sample: the ``H x W`` window at ``(dy, dx)`` of the image zero-padded by ``pad``,
    mirrored left-right where ``flip`` is true. ``images`` is ``(B, C, H, W)``, any dtype."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = dy.to(dev).view(b, 1) + torch.arange(h, device=dev)  # (B, H) rows of the window
    rows = rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    ar = torch.arange(w, device=dev).view(1, w).expand(b, w)
    cols = torch.where(flip.to(dev).view(b, 1), ar.flip(1), ar) + dx.to(dev).view(b, 1)
    return padded.gather(2, rows).gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    scale: float = 255.0,
) -> torch.Tensor:
    """``(images / scale - mean) / std`` per channel, as float32 (mean/std may be tensors
    already on the device, which avoids a host-to-device copy per batch)."""
    c = images.shape[1]
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    return (images.float() / scale - m) / s

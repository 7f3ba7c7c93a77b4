"""Bringing two feature maps to one spatial size before a feature loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def match_spatial(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the spatially larger of two maps to the other's size."""
    if fs.dim() != 4 or ft.dim() != 4:
        return fs, ft
    hs, ws = fs.shape[-2:]
    ht, wt = ft.shape[-2:]
    if (hs, ws) == (ht, wt):
        return fs, ft
    size = (min(hs, ht), min(ws, wt))
    if (hs, ws) != size:
        fs = F.adaptive_avg_pool2d(fs, size)
    if (ht, wt) != size:
        ft = F.adaptive_avg_pool2d(ft, size)
    return fs, ft

"""Attention-based fusion (ABF) for ReviewKD's review mechanism.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, Sec. 3.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ABF(nn.Module):
    """Fuses one student stage feature with the fused residual of the deeper stage.

    ``x`` goes through a 1x1 conv + BN to ``mid_channels``; when ``fuse`` is set, the
    residual from the deeper level is resized (nearest) to ``x``'s size and the two are
    mixed with two spatial attention maps (1x1 conv on their concatenation, sigmoid). The
    mixed map is resized to the teacher's size and a 3x3 conv + BN gives the teacher-shaped
    output. Returns ``(output, residual)``; the residual feeds the next, shallower ABF.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper level's residual")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x

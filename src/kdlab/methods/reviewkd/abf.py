"""Attention-based fusion (ABF) for ReviewKD's review mechanism.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, Sec. 3.2;
the layers follow the authors' ``ABF`` (``dvlab-research/ReviewKD``).

Computed as the authors' module, with three changes to how, not what:

- the attention logits ``conv1x1(cat([x, residual]))`` are computed as
  ``conv1x1(x, W[:, :m]) + conv1x1(residual, W[:, m:])``: no concatenated copy is made or
  kept for the backward (the two halves of each dot product are summed apart: equal up to
  float rounding);
- a nearest resize to the size the map already has (a copy, forward and backward) is
  skipped;
- on CPU the maps are kept channels-last (NHWC, :func:`kdlab.nn.layout.preferred_layout`):
  oneDNN convolves them without reordering, and the broadcasts of the attention maps over
  the channels run along contiguous memory. BatchNorm's NHWC kernel sums its statistics in
  float32 (the NCHW kernel in float64): equal up to float rounding.

Measured in benchmarks/results/reviewkd_cost_cpu.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.nn.layout import preferred_layout


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

    def attention(self, x: Tensor, residual: Tensor) -> Tensor:
        """``att_conv(cat([x, residual]))`` without the concatenation: ``(b, 2, h, w)``."""
        assert self.att_conv is not None
        conv, sigmoid = self.att_conv
        m = x.shape[1]
        logits = (F.conv2d(x, conv.weight[:, :m], conv.bias)
                  + F.conv2d(residual, conv.weight[:, m:]))
        return sigmoid(logits)

    def forward(self, x: Tensor, residual: Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        x = self.conv1(x.contiguous(memory_format=preferred_layout(x.device)))
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper level's residual")
            if residual.shape[-2:] != x.shape[-2:]:
                residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.attention(x, residual)
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def review(abfs: Sequence[ABF], levels: Sequence[Tensor],
           out_sizes: Sequence[tuple[int, int] | None]) -> list[Tensor]:
    """ReviewKD's review (Chen et al. 2021, Sec. 3.2): student levels (shallow to deep) ->
    fused maps, same order. The levels are visited deepest first; ``abfs[i]`` fuses level
    ``i`` with the residual of level ``i + 1`` (the deepest does not fuse) and resizes to
    ``out_sizes[i]`` (None: no resize)."""
    results: list[Tensor] = [levels[0]] * len(levels)
    residual = None
    for i in reversed(range(len(levels))):
        results[i], residual = abfs[i](levels[i], residual, out_sizes[i])
    return results

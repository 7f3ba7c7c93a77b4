"""Decoders not in torchvision: PSPNet's pyramid pooling head and a light ASPP head.

Every head is an ``nn.Sequential`` whose last layer is the 1x1 classifier conv, so the staged
view splits it into ``pre_pool`` (all but the last) and ``classifier`` (the last).

- :class:`PSPHead` (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, Sec. 3.2): the
  last feature map concatenated with four pooled branches (bins 1, 2, 3, 6; each a 1x1
  conv-BN-ReLU to ``in / 4`` channels, upsampled back), then a 3x3 conv-BN-ReLU, dropout 0.1
  and the 1x1 classifier, at the width the builder gives (``pspnet_*``: 256 after a
  2048-channel backbone, 128 after ResNet-18's 512; CIRKD's PSPNet, ``pspnet_*_cirkd``, uses
  512 and 128, the PSPNet paper 512). The pooled branches are upsampled with
  ``align_corners=False`` by default (torchvision's ASPP does the same); CIRKD's networks
  pass True.
- :func:`lite_aspp_head`: the DeepLabV3 head of torchvision (``ASPP`` + 3x3 conv-BN-ReLU +
  1x1 conv) at a small width and small atrous rates, for the CPU networks; its ASPP dropout is
  0.1 instead of 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: ``cat(x, up(branch_b(pool_b(x))) for b in bins)``;
    ``2 * in_channels`` output channels for four bins."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), *,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        width = in_channels // len(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, width, 1))
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear",
                                align_corners=self.align_corners)
                  for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Sequential):
    """Pyramid pooling, 3x3 conv-BN-ReLU to ``channels``, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int, *,
                 align_corners: bool = False) -> None:
        pyramid = PyramidPooling(in_channels, align_corners=align_corners)
        super().__init__(
            pyramid,
            *_conv_bn_relu(2 * in_channels, channels, 3),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


def lite_aspp_head(in_channels: int, num_classes: int, channels: int,
                   rates: Sequence[int] = (2, 4)) -> nn.Sequential:
    """torchvision's DeepLabV3 head at width ``channels`` with atrous ``rates``."""
    aspp = ASPP(in_channels, rates, out_channels=channels)
    aspp.project[-1].p = 0.1  # the project's dropout (0.5 in DeepLabV3)
    return nn.Sequential(aspp, *_conv_bn_relu(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))

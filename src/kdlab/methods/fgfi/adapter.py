"""FGFI's adaptation layer: the student's feature mapped to the teacher's channels.

Wang, Yuan, Zhang & Feng, CVPR 2019, Sec. 3.2: a 3x3 convolution (with bias) after the
student's feature, so that its channels match the teacher's and the imitation does not force
the student's own feature to equal the teacher's. The authors' detector follows it with a ReLU
because their target (VGG16's ``conv5_3``) is post-ReLU; FPN outputs are not, so the ReLU is a
setting (``relu``), off for FPN targets. Initialisation as the authors': the weight from a
normal distribution wrapped to two standard deviations (``normal_().fmod_(2) * 1e-4``), the
bias left at PyTorch's default (their truncated branch does not zero it).
"""

from __future__ import annotations

import torch
from torch import nn

#: the standard deviation of the authors' weight initialisation
INIT_STD = 1e-4


class Adaptation(nn.Sequential):
    """``Conv2d(in, out, 3, padding=1)`` (+ ``ReLU`` when ``relu``)."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = False) -> None:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        with torch.no_grad():
            conv.weight.normal_().fmod_(2).mul_(INIT_STD)
        super().__init__(conv, nn.ReLU()) if relu else super().__init__(conv)


__all__ = ["Adaptation", "INIT_STD"]

"""ReviewKD's hierarchical context loss (HCL).

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError


def hcl_loss(
    student_features: list[Tensor], teacher_features: list[Tensor],
    levels: tuple[int, ...] = (4, 2, 1),
) -> Tensor:
    """Hierarchical context loss (Chen et al. 2021, Sec. 3.3), summed over feature pairs.

    For each pair: MSE at full resolution with weight 1, then MSE after adaptive average
    pooling to ``l x l`` for each level ``l`` smaller than the map, with weights 1/2, 1/4, ...;
    the weighted sum is divided by the sum of the weights used.
    """
    if len(student_features) != len(teacher_features):
        raise UserError(
            f"ReviewKD got {len(student_features)} student and {len(teacher_features)} teacher "
            "features; use the same number of stages for both."
        )
    total = student_features[0].new_zeros(())
    for fs, ft in zip(student_features, teacher_features, strict=True):
        if fs.shape != ft.shape:
            raise UserError(
                f"ReviewKD feature shapes differ ({tuple(fs.shape)} vs {tuple(ft.shape)}); "
                "feed both networks the same images."
            )
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight, weight_sum = 1.0, 1.0
        for level in levels:
            if level >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level)
            )
            weight_sum += weight
        total = total + loss / weight_sum
    return total

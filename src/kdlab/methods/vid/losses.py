"""Variational information distillation: Gaussian negative log-likelihood of the teacher.

Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.errors import UserError


def vid_loss(mean: Tensor, variance: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood of ``target`` under N(``mean``, ``variance``), per element.

    Ahn et al. 2019 (Sec. 3, Gaussian variational distribution):
    ``sum_c sum_hw log sigma_c + (t - mu)^2 / (2 sigma_c^2)``
    (the constant ``log sqrt(2 pi)`` dropped), averaged over batch, channels and positions.
    ``mean`` and ``target`` are ``(b, c, h, w)``; ``variance`` holds one positive value per
    channel, shape ``(c,)``.
    """
    if mean.shape != target.shape:
        raise UserError(
            f"VID prediction {tuple(mean.shape)} and teacher feature {tuple(target.shape)} "
            "differ in shape; feed both networks the same images."
        )
    var = variance.view(1, -1, *([1] * (mean.dim() - 2)))
    return (0.5 * ((mean - target).pow(2) / var + torch.log(var))).mean()

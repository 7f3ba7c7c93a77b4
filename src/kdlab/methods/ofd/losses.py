"""Overhaul of feature distillation: margin ReLU targets and the partial L2 distance.

Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdlab.errors import UserError


def bn_margin(weight: Tensor, bias: Tensor, *, min_prob: float = 1e-3) -> Tensor:
    """Per-channel margin m = E[x | x < 0] of x ~ N(bias, |weight|^2).

    Heo et al. 2019, Sec. 3.2.
    With s = |gamma| and mu = beta of the batch norm before the ReLU,
    ``E[x | x < 0] = mu - s * phi(mu / s) / Phi(-mu / s)``. Where the negative part is almost
    empty (``Phi(-mu/s) <= min_prob``) the authors' code uses ``-3 s``; so do we.
    """
    s = weight.detach().float().abs().clamp_min(1e-12)
    mu = bias.detach().float()
    z = -mu / s
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > min_prob, mu - s * pdf / cdf.clamp_min(min_prob), -3 * s)
    return margin.to(weight.dtype)


def margin_relu(target: Tensor, margin: Tensor) -> Tensor:
    """Teacher transform max(x, m) with a per-channel margin (Heo et al. 2019, Sec. 3.2)."""
    return torch.maximum(target, margin.view(1, -1, *([1] * (target.dim() - 2))))


def ofd_partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """Partial L2 of Heo et al. 2019 (Sec. 3.3), summed over every element.

    With ``t = max(target, m)``: ``(s - t)^2`` except where ``s <= t`` and ``t <= 0`` (the
    student is already below a non-positive teacher response: no penalty). The method
    divides by batch size and the paper's 1000 (CIFAR) / 10000 (ImageNet).
    """
    if source.shape != target.shape:
        raise UserError(
            f"OFD student feature {tuple(source.shape)} and teacher feature "
            f"{tuple(target.shape)} differ in shape; feed both networks the same images."
        )
    t = margin_relu(target, margin)
    mask = ((source > t) | (t > 0)).to(source.dtype)
    return ((source - t).pow(2) * mask).sum()

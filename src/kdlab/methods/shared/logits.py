"""Losses on output logits: Hinton's KD and Decoupled KD.

Pure functions: tensors in, a scalar out, averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _wide(logits: Tensor) -> Tensor:
    """Half-precision logits (under autocast) are computed in float32; others keep their dtype."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def per_position(logits: Tensor) -> Tensor:
    """``(B, K)`` as it is; a score map ``(B, K, H, W)`` as ``(B * H * W, K)`` rows, one per
    pixel, so that a per-sample loss becomes a per-pixel loss averaged over the pixels."""
    if logits.dim() <= 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.

    ``tau^2 * KL(p_t || p_s)`` with ``p = softmax(z / tau)``, summed over classes and
    averaged over the batch (FCFD §2.1, L_kd). The tau^2 factor keeps the gradient scale
    independent of the temperature. Score maps ``(B, K, H, W)`` of equal size are compared
    pixel by pixel and averaged over the pixels (the pixel-wise distillation of Liu et al.,
    "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019, Eq. 1).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_loss needs logits of one shape, got {tuple(student_logits.shape)}"
                         f" and {tuple(teacher_logits.shape)}")
    student_logits, teacher_logits = per_position(student_logits), per_position(teacher_logits)
    log_p_s = F.log_softmax(_wide(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(_wide(teacher_logits) / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _binary_kl(p_t: Tensor, p_s: Tensor) -> Tensor:
    """KL between the two-way distributions [p, 1 - p] per sample (summed over the two)."""
    eps = torch.finfo(p_s.dtype).tiny
    b_t = torch.stack([p_t, 1 - p_t], dim=1).clamp_min(eps)
    b_s = torch.stack([p_s, 1 - p_s], dim=1).clamp_min(eps)
    return (b_t * (b_t.log() - b_s.log())).sum(dim=1)


def tckd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> Tensor:
    """Target-class KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, Eq. 2).

    KL between the binary distributions b = [p_target, 1 - p_target] of teacher and student,
    at temperature tau, times tau^2, averaged over the batch.
    """
    p_s = F.softmax(_wide(student_logits) / temperature, dim=1)
    p_t = F.softmax(_wide(teacher_logits) / temperature, dim=1)
    idx = targets.view(-1, 1)
    kl = _binary_kl(p_t.gather(1, idx).squeeze(1), p_s.gather(1, idx).squeeze(1))
    return kl.mean() * temperature**2


def nckd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> Tensor:
    """Non-target-class KD (Zhao et al., CVPR 2022, Eq. 2).

    KL between teacher and student distributions over the non-target classes only
    (softmax over the logits with the target masked out), times tau^2, batch mean.
    """
    mask = F.one_hot(targets, student_logits.shape[1]).bool()
    # A large negative value, not -inf, so 0 * log 0 terms stay finite.
    s = (_wide(student_logits) / temperature).masked_fill(mask, -1e4)
    t = (_wide(teacher_logits) / temperature).masked_fill(mask, -1e4)
    kl = F.kl_div(
        F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True
    )
    return kl * temperature**2


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``.

    FCFD+DKD (FCFD App. C.1) uses alpha = 1, beta = 2; the DKD paper's CIFAR default is
    alpha = 1, beta = 8.
    """
    tckd = tckd_loss(student_logits, teacher_logits, targets, temperature)
    nckd = nckd_loss(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd

"""Attention transfer: spatial attention maps and the distance between them.

Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError


def attention_map(feature: Tensor, p: float = 2) -> Tensor:
    """Spatial attention of a ``(b, c, h, w)`` map: channel-pooled ``|F|^p``, L2-normalised.

    Zagoruyko & Komodakis 2017, Sec. 3.1 (F^p_mean) and Eq. 2 (``Q / ||Q||_2``). Returns a
    ``(b, h*w)`` tensor whose rows have unit L2 norm (a zero map stays zero).
    """
    if feature.dim() != 4:
        raise UserError(
            f"Attention maps need (batch, channels, height, width) features, got shape "
            f"{tuple(feature.shape)}; pick a convolutional stage."
        )
    q = feature.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, p=2, dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2) -> Tensor:
    """Attention-transfer loss between one student and one teacher feature map.

    Zagoruyko & Komodakis 2017, Eq. 2 with the 2-norm of the difference of normalised maps,
    squared and averaged over batch and positions as in the authors' CIFAR code; the method
    multiplies it by ``beta / 2`` and sums over stage pairs. Both maps must share batch size
    and spatial size (channels may differ).
    """
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise UserError(
            f"Student and teacher batches differ ({student_feature.shape[0]} vs "
            f"{teacher_feature.shape[0]}); feed both networks the same images."
        )
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise UserError(
            f"Attention transfer needs equal spatial sizes, got {tuple(student_feature.shape[2:])}"
            f" and {tuple(teacher_feature.shape[2:])}; pool the larger map to the smaller size."
        )
    diff = attention_map(student_feature, p) - attention_map(teacher_feature, p)
    return diff.pow(2).mean()

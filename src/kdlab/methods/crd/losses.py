"""Contrastive representation distillation: the NCE loss over memory-bank scores.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.errors import UserError


def crd_nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """NCE loss of one view: column 0 holds the positive, columns 1..K the negatives.

    Tian et al. 2020, Sec. 3 with the NCE approximation of their memory-bank code (noise
    uniform, P_n = 1 / N, K negatives): ``h = P / (P + K P_n)``;
    loss = -(1/b) sum_i [ log h(positive_i) + sum_k log(1 - h(negative_ik)) ].
    ``scores`` are the normalised ``exp(<v, m> / T) / Z`` of shape ``(b, K + 1)``.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise UserError(
            f"CRD scores must be (batch, 1 + negatives), got {tuple(scores.shape)}; "
            "set method.num_negatives to at least 1."
        )
    b, k1 = scores.shape
    m_pn = (k1 - 1) / float(num_data)
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + m_pn + eps))
    log_d0 = torch.log(m_pn / (neg + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / b

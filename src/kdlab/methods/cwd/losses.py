"""The loss of channel-wise distillation (CWD: Shu et al., "Channel-wise Knowledge
Distillation for Dense Prediction", ICCV 2021; the authors' code: irfanICMLL/TorchDistiller,
``SemSeg-distill/utils/criterion.py``). A pure function: tensors in, a scalar out."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.shared.dense import check_maps, match_size
from kdlab.methods.shared.logits import _wide


def cwd_loss(student_map: Tensor, teacher_map: Tensor, temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation, CWD §3.2, Eqs. 3-4.

    Each channel ``c`` of a map becomes a distribution over the ``h w`` positions,
    ``phi(y_c) = softmax(y_c / tau)``; the loss is ``tau^2 / (B C) * sum_{b,c} KL(phi(y^t_c)
    || phi(y^s_c))`` (the sum over positions inside the KL), normalised by batch and channels
    as in the authors' ``CriterionCWD`` (norm_type 'channel', divergence 'kl') and mmrazor's
    ``ChannelWiseDivergence``. Channels must match (project a student feature first); the
    maps are brought to one size (:func:`~kdlab.methods.shared.dense.match_size`).
    """
    check_maps(student_map, teacher_map, "Channel-wise distillation")
    if student_map.shape[1] != teacher_map.shape[1]:
        raise UserError(f"Channel-wise distillation needs equal channels, got "
                        f"{student_map.shape[1]} and {teacher_map.shape[1]}; project the "
                        "student's map to the teacher's channels.")
    s, t = match_size(_wide(student_map), _wide(teacher_map))
    log_p_s = F.log_softmax(s.flatten(2) / temperature, dim=2)
    log_p_t = F.log_softmax(t.flatten(2) / temperature, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2)  # (B, C)
    return kl.mean() * temperature**2

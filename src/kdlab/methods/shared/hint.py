"""The hint loss: squared L2 distance between a (bridged) student feature and a teacher's.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, Eq. 3; the same distance is
FCFD's appearance loss (Liu et al., ICLR 2023, Eq. 5).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared difference over every element (batch, channels, positions).

    FitNets Eq. 3 writes ``1/2 ||u_h - r(v_g)||^2``; like CRD's and the FCFD authors' code
    we average over all elements instead of summing, so the loss weight does not depend on
    the feature size. The teacher feature is the target and should carry no gradient.
    """
    if student_feature.shape != teacher_feature.shape:
        raise UserError(
            f"Hint features differ in shape ({tuple(student_feature.shape)} vs "
            f"{tuple(teacher_feature.shape)}); bridge the student feature to the teacher's."
        )
    return F.mse_loss(student_feature, teacher_feature)

"""FCFD's feature losses: appearance (Eq. 5) and the L2 parts of the function losses.

Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023.

* ``app_loss`` - Eq. 5: ``L2(F_t^k, B_st^k(F_s^k))``.
* ``func_l2_loss`` - the ``l <= N`` terms of Eq. 6: the bridged student feature is run
  through the teacher's later stages and each result is matched to the teacher's own
  feature at that stage (and, for App. G's ``L_func'-L2``, the same with the student's
  later stages and the student's own features).
* The ``l = N + 1`` term of Eq. 6 and Eq. 7 are KL divergences of logits at temperature
  tau; they use :func:`kdlab.methods.shared.logits.kd_loss` (or ``dkd_loss`` for FCFD+DKD).

* ``pooled_l2_loss`` - not in the paper, in the authors' code: at the last stage, the same
  L2 between the ReLU'd, globally average-pooled features.

"L2" is the mean squared difference over all elements, as in the authors' code
(``F.mse_loss``); targets are detached there and must carry no gradient here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.shared.hint import hint_loss


def app_loss(bridged_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """FCFD Eq. 5: mean squared difference of ``B_st^k(F_s^k)`` and ``F_t^k``."""
    return hint_loss(bridged_student, teacher_feature)


def func_l2_loss(path_features: Sequence[Tensor], target_features: Sequence[Tensor]) -> Tensor:
    """FCFD Eq. 6, terms ``l = k+1 .. N``: sum over later stages of the mean squared
    difference between the path's feature and the target network's own feature there.

    ``path_features[j]`` and ``target_features[j]`` are the outputs of the same stage.
    """
    if len(path_features) != len(target_features) or not path_features:
        raise UserError(
            f"func_l2_loss needs one target per path feature (got {len(path_features)} and "
            f"{len(target_features)}); pass the later stages of both passes."
        )
    total = hint_loss(path_features[0], target_features[0])
    for f, t in zip(path_features[1:], target_features[1:], strict=True):
        total = total + hint_loss(f, t)
    return total


def relu_pooled(feature: Tensor) -> Tensor:
    """``avgpool(ReLU(F))`` flattened to ``(b, c)``: the authors' pooled view of a last-stage
    feature (a vector passes through the ReLU only)."""
    x = F.relu(feature)
    return F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dim() == 4 else x


def pooled_l2_loss(feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """The authors' extra last-stage term (FCFD code, ``classification/cifar/main.py``; not in
    the paper): mean squared difference of :func:`relu_pooled` of a last-stage feature
    (``B_st^N(F_s^N)`` or a ``<k, 1>`` path's last teacher-stage output) and of ``F_t^N``."""
    return hint_loss(relu_pooled(feature), relu_pooled(teacher_feature))

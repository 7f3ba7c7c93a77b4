"""What the detection variants of kd, fitnet and fcfd share: the distillation losses on a
two-stage detector's FPN features and ROI-head outputs, the check of their reduction, and one
bridge per FPN level.

Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023, App. D.1:

* ``fpn_app_loss`` - ``sum_k L_app^k = sum_k L2(F_t^k, B_st^k(F_s^k))`` over the FPN levels
  (also FitNet-style FPN imitation).
* ``roi_kl_loss`` and ``roi_l2_loss`` - the two parts of ``L_func``, ``L_func'`` and ``L_kd``
  (Eqs. 14-18): ``sum_{r in R} KL(p_t(x, r) || p(x, r)) + L2(delta_t(x, r), delta(x, r))``.

Reduction: the paper writes the ROI terms as sums over the proposals R; the authors' code
(``rcnn_kd_loss`` in their ``detection/model/rcnn.py``), whose weights of 1 the paper reports,
averages them: the KL with ``reduction="batchmean"`` (summed over classes, averaged over R) and
the L2 as ``F.mse_loss`` (averaged over R and the box coordinates). ``reduction="mean"``
(default) is the code's form, ``"sum"`` the formula's. "L2" of features is the mean squared
difference over all elements (``F.mse_loss``), as in the authors' code.

Targets (teacher tensors) must carry no gradient. Every loss is computed in float32 (safe
under autocast).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.methods.shared.bridge import Bridge
from kdlab.models.staged.view import StageInfo
from kdlab.tasks.detection.models import Detector

REDUCTIONS = ("mean", "sum")


def _check(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise UserError(f"The ROI loss reduction must be 'mean' (the authors' code) or 'sum' "
                        f"(the paper's formula), got {reduction!r}.")


def fpn_app_loss(bridged_student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """FCFD App. D.1, ``sum_k L2(F_t^k, B_st^k(F_s^k))``: the mean squared difference per FPN
    level, summed over the levels of ``bridged_student`` (each must be in ``teacher``)."""
    missing = [k for k in bridged_student if k not in teacher]
    if missing or not bridged_student:
        raise UserError(f"fpn_app_loss needs teacher FPN levels {missing or 'to compare'}; "
                        "give both detectors FPNs with the same levels.")
    total = None
    for k, s in bridged_student.items():
        term = F.mse_loss(s.float(), teacher[k].float())
        total = term if total is None else total + term
    assert total is not None
    return total


def roi_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                reduction: str = "mean") -> Tensor:
    """FCFD App. D.1, Eqs. 14-18, class part: ``KL(p_t(x, r) || p(x, r))`` per proposal, with
    ``p = softmax(logits / T)`` over the K + 1 classes, times ``T^2``; averaged (``"mean"``)
    or summed (``"sum"``) over the proposals. The paper and the authors use T = 1."""
    _check(reduction)
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * (t * t)
    return kl / student_logits.shape[0] if reduction == "mean" else kl


def roi_l2_loss(student_deltas: Tensor, teacher_deltas: Tensor, reduction: str = "mean",
                *, skip_background: bool = True) -> Tensor:
    """FCFD App. D.1, Eqs. 14-18, box part: ``L2(delta_t(x, r), delta(x, r))``, the squared
    difference of the class-specific box deltas ``(R, 4 (K + 1))``; averaged over every
    element (``"mean"``, ``F.mse_loss``) or summed (``"sum"``).

    ``skip_background`` drops the background class's four columns (torchvision's predictor has
    them, never trained; Detectron2's, the authors', has only the K object classes).
    """
    _check(reduction)
    if skip_background:
        student_deltas, teacher_deltas = student_deltas[:, 4:], teacher_deltas[:, 4:]
    return F.mse_loss(student_deltas.float(), teacher_deltas.float(),
                      reduction="sum" if reduction == "sum" else "mean")


def roi_kd_loss(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor],
                temperature: float = 1.0, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """``(KL, L2)`` of ROI outputs ``(class logits, box deltas)``: the two parts of one of
    ``L_kd``, ``L_func``, ``L_func'`` (FCFD App. D.1)."""
    return (roi_kl_loss(student[0], teacher[0], temperature, reduction),
            roi_l2_loss(student[1], teacher[1], reduction))


def fpn_bridges(src: Detector, dst: Detector, levels: list[str], what: str) -> nn.ModuleDict:
    """One :class:`~kdlab.methods.shared.bridge.Bridge` per FPN level from ``src``'s channels
    to ``dst``'s: a 3x3 stride-1 conv and a BatchNorm (FPN outputs are not post-ReLU),
    Kaiming-initialised, as the FCFD authors' ``build_bridges``."""
    a = StageInfo(src.fpn_channels, 1, 1, post_relu=False)
    b = StageInfo(dst.fpn_channels, 1, 1, post_relu=False)
    return nn.ModuleDict({k: Bridge(a, b, where=f"{what} at FPN level {k}") for k in levels})


__all__ = ["REDUCTIONS", "fpn_app_loss", "fpn_bridges", "roi_kd_loss",
           "roi_kl_loss", "roi_l2_loss"]

"""Self-supervised label augmentation (SLA): rotations, joint labels, aggregation, SLA-SD.

Lee, Hwang & Shin, "Self-supervised Label Augmentation via Input Transformations", ICML 2020,
Sec. 2.2. Every image ``x`` is shown under ``M`` transformations ``t_1..t_M`` (here the four
rotations by 0, 90, 180 and 270 degrees); a *joint* classifier predicts the pair
(class ``i``, transformation ``j``) among ``K * M`` labels:

- ``L_SLA = 1/M sum_j CE(joint(t_j(x)), (y, j))`` (the joint-label loss);
- aggregated prediction: ``P_agg(i | x) = softmax_i(s)`` with
  ``s_i = 1/M sum_j z_{(i, j)}(t_j(x))``, the average over transformations of the joint
  logit at the label that transformation would have;
- self-distillation from the aggregate (SLA+SD): an ordinary ``K``-way classifier ``u`` on
  the same network learns ``KL(P_agg || softmax(u(x)))`` (with the aggregate as a fixed
  target) beside its CE, so that one un-rotated pass gives the aggregate's benefit.

Joint-label layout, as in the FRSKD authors' SLA code (``classification/distill_loss/sla.py``):
label ``(i, j)`` is index ``i * M + j`` (class-major); a rotated batch is sample-major, row
``b * M + j`` holding image ``b`` turned ``j`` quarter turns (``torch.rot90`` over the
spatial axes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.methods.shared.logits import kd_loss

#: the four rotations of the paper (0, 90, 180, 270 degrees)
ROTATIONS = 4


def rotate_batch(images: Tensor, num_rotations: int = ROTATIONS) -> Tensor:
    """``(B, C, H, W)`` -> ``(B * M, C, H, W)``: row ``b * M + j`` is image ``b`` rotated by
    ``j`` quarter turns (``M = num_rotations``; square images)."""
    turned = [torch.rot90(images, j, dims=(2, 3)) for j in range(num_rotations)]
    return torch.stack(turned, dim=1).flatten(0, 1)


def joint_targets(targets: Tensor, num_rotations: int = ROTATIONS) -> Tensor:
    """The joint label ``y * M + j`` of every row of :func:`rotate_batch`'s batch."""
    j = torch.arange(num_rotations, device=targets.device)
    return (targets.view(-1, 1) * num_rotations + j).flatten()


def aggregate_joint_logits(joint_logits: Tensor, num_rotations: int = ROTATIONS) -> Tensor:
    """``(B * M, K * M)`` joint logits of a rotated batch -> ``(B, K)`` aggregated logits
    ``s_i = 1/M sum_j z_{(i, j)}(t_j(x))`` (SLA's aggregated inference, before softmax)."""
    m = num_rotations
    rows, cols = joint_logits.shape
    if rows % m or cols % m:
        raise ValueError(f"joint logits {tuple(joint_logits.shape)} are not a rotated batch of "
                         f"{m} transformations")
    z = joint_logits.view(rows // m, m, cols // m, m)  # [b, j (input), i, j' (label)]
    return torch.diagonal(z, dim1=1, dim2=3).mean(dim=-1)


def sla_joint_loss(joint_logits: Tensor, targets: Tensor,
                   num_rotations: int = ROTATIONS) -> Tensor:
    """``L_SLA``: cross-entropy of the joint classifier on the rotated batch, averaged over
    the ``B * M`` rows (that is ``1/M sum_j`` of each rotation's batch mean)."""
    return F.cross_entropy(joint_logits, joint_targets(targets, num_rotations))


def sla_sd_loss(logits: Tensor, joint_logits: Tensor, temperature: float = 1.0,
                num_rotations: int = ROTATIONS) -> Tensor:
    """SLA+SD's distillation term: ``tau^2 KL(softmax(s / tau) || softmax(u / tau))`` from the
    aggregated joint prediction ``s`` (a fixed target, detached) to the ``K``-way logits ``u``
    of the un-rotated batch, averaged over the batch. ``tau = 1`` is the paper's term; the
    FRSKD authors use their distillation temperature (4) with the ``tau^2`` scaling."""
    target = aggregate_joint_logits(joint_logits, num_rotations).detach()
    return kd_loss(logits, target, temperature)

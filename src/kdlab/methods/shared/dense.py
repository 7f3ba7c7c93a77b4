"""Losses on dense maps that several methods use: pixel-wise KD (``kd`` on segmentation and
SKD's pixel-wise term), and the map checks and size matching of CWD and SKD.

Score maps are ``(B, K, h, w)`` logits at the decoder's resolution (not upsampled); features
are ``(B, C, h, w)`` maps. Pure functions: tensors in, a scalar out.

Reference: SKD: Liu et al., "Structured Knowledge Distillation for Semantic Segmentation",
CVPR 2019 (the authors' code: irfanICMLL/structure_knowledge_distillation,
``utils/criterion.py``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.shared.logits import kd_loss


def check_maps(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise UserError(f"{what} needs (batch, channels, height, width) maps, got shapes "
                        f"{tuple(student.shape)} and {tuple(teacher.shape)}; use a "
                        "segmentation network's score map or feature map.")
    if student.shape[0] != teacher.shape[0]:
        raise UserError(f"{what}: student and teacher batches differ ({student.shape[0]} vs "
                        f"{teacher.shape[0]}); feed both networks the same images.")


def match_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two ``(B, C, h, w)`` maps to one spatial size: the smaller one is upsampled
    (bilinear, ``align_corners=False``) to the larger one's size in each dimension."""
    size = (max(student.shape[-2], teacher.shape[-2]), max(student.shape[-1], teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.interpolate(student, size=size, mode="bilinear", align_corners=False)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.interpolate(teacher, size=size, mode="bilinear", align_corners=False)
    return student, teacher


# --------------------------------------------------------------------- pixel-wise
def pixel_kl_loss(student_logits: Tensor, teacher_logits: Tensor,
                  temperature: float = 1.0) -> Tensor:
    """Pixel-wise distillation, SKD §3.1 ("Pixel-wise distillation"), Eq. 1.

    ``tau^2 / (B h w) * sum_{b,i} KL(q_i^t || q_i^s)`` with ``q_i = softmax(z_i / tau)`` the
    class distribution at pixel ``i``: Hinton's KD applied to every pixel and averaged over
    the pixels and the batch. The KL runs teacher -> student (``KL(q^t || q^s)``, Hinton's
    direction and the authors' code; the paper writes ``KL(q^s || q^t)``). The maps are
    first brought to one size (:func:`match_size`). With ``tau = 1`` the gradient equals that
    of the authors' ``CriterionPixelWise`` (which computes the cross-entropy
    ``-sum q^t log q^s``, a constant away from the KL) up to its normalisation: the authors
    divide by ``h w`` but not by the batch size.
    """
    check_maps(student_logits, teacher_logits, "Pixel-wise distillation")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise UserError(f"Pixel-wise distillation needs the same classes, got "
                        f"{student_logits.shape[1]} and {teacher_logits.shape[1]}; build the "
                        "student and the teacher for the same data set.")
    return kd_loss(*match_size(student_logits, teacher_logits), temperature)

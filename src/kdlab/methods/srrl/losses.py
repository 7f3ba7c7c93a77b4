"""SRRL's two terms: feature matching and softmax regression through the teacher's classifier.

Yang, Martinez, Bulat & Tzimiropoulos, "Knowledge Distillation via Softmax Regression
Representation Learning", ICLR 2021.
"""

from __future__ import annotations

from torch import Tensor

from kdlab.errors import UserError
from kdlab.methods.shared.hint import hint_loss


def srrl_feature_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Feature matching ``L_FM`` (Yang et al. 2021, Sec. 3): mean squared difference
    of the student's penultimate representation (after the connector, pooled) and the
    teacher's, averaged over batch and channels (the authors' code compares the per-channel
    spatial means, i.e. the pooled features)."""
    if student_embedding.shape != teacher_embedding.shape:
        raise UserError(
            f"SRRL feature matching needs equal shapes, got {tuple(student_embedding.shape)} "
            f"and {tuple(teacher_embedding.shape)}; the connector maps to the teacher's width."
        )
    return hint_loss(student_embedding, teacher_embedding)


def srrl_softmax_regression_loss(regressed_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Softmax regression ``L_SR`` (Yang et al. 2021, Sec. 3; in the L2 form the
    authors' code uses): mean squared difference of the teacher classifier's output on the
    student's representation and the teacher's own logits."""
    if regressed_logits.shape != teacher_logits.shape:
        raise UserError(
            f"SRRL softmax regression compares logits of equal shape, got "
            f"{tuple(regressed_logits.shape)} and {tuple(teacher_logits.shape)}; teacher and "
            "student must predict the same classes."
        )
    return hint_loss(regressed_logits, teacher_logits)

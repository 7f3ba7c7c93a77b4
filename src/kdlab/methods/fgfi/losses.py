"""FGFI's imitation loss (Wang, Yuan, Zhang & Feng, CVPR 2019, Eq. 2).

``L_imitation = 1 / (2 N_p) * sum_{i, j} sum_c I_ij (f_adap(s)_ijc - t_ijc)^2``: the squared
difference summed over the channels and the masked locations, divided by twice the number of
masked locations ``N_p`` (not by the channels), as the authors' training script computes it
(``(pow(t - adap(s), 2) * mask).sum() / (2 * mask.sum())`` over the whole batch). On an FPN the
levels are one set of locations: the sums run over every level and image, with one ``N_p``.
A batch without any masked location (no box) gives 0 instead of the authors' 0 / 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kdlab.errors import UserError


def fgfi_loss(adapted: Sequence[Tensor], teacher: Sequence[Tensor],
              masks: Sequence[Tensor]) -> Tensor:
    """``sum_l sum (mask_l * (teacher_l - adapted_l)^2) / (2 * max(N_p, 1))``.

    ``adapted`` / ``teacher``: per level ``(B, C, H, W)`` (the student's adapted feature and
    the teacher's); ``masks``: per level ``(B, H, W)``, ``N_p`` their sum over every level.
    Computed in float32 at least (float64 inputs stay float64).
    """
    if not (len(adapted) == len(teacher) == len(masks)) or not adapted:
        raise UserError(f"FGFI got {len(adapted)} student, {len(teacher)} teacher and "
                        f"{len(masks)} mask levels; give it the same FPN levels.")
    dtype = torch.promote_types(adapted[0].dtype, torch.float32)
    total = adapted[0].new_zeros((), dtype=dtype)
    count = adapted[0].new_zeros((), dtype=dtype)
    for s, t, m in zip(adapted, teacher, masks, strict=True):
        if s.shape != t.shape or s.shape[:1] + s.shape[2:] != m.shape:
            raise UserError(f"FGFI's shapes differ: student {tuple(s.shape)}, teacher "
                            f"{tuple(t.shape)}, mask {tuple(m.shape)}; feed both detectors "
                            "the same resized batch.")
        w = m.to(dtype)[:, None]
        total = total + ((t.to(dtype) - s.to(dtype)).pow(2) * w).sum()
        count = count + w.sum()
    return total / (2 * count.clamp(min=1.0))


__all__ = ["fgfi_loss"]

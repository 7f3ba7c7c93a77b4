"""AT: attention transfer between student and teacher stage outputs.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. Loss::

    L = ce_weight * CE + beta / 2 * sum_j at_loss(F_s^j, F_t^j)

over stage pairs ``j`` (all stages when both networks have as many; otherwise the last
stages of each, aligned from the end). A larger map is average-pooled to the smaller size.
Defaults are the authors' CIFAR setting: p = 2, beta = 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.losses.attention import at_loss
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged import Features


def aligned_stage_pairs(
    num_student: int, num_teacher: int, stages: list[int] | None
) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs, aligned from the deepest stage.

    ``stages`` selects pairs by their index counted on the shallower network (negative
    indices allowed); None takes every pair.
    """
    n = min(num_student, num_teacher)
    pairs = [(num_student - n + j, num_teacher - n + j) for j in range(n)]
    if stages is None:
        return pairs
    picked = []
    for s in stages:
        if not -n <= s < n:
            raise UserError(
                f"Stage {s} does not exist: the networks share {n} stages; use method.stages "
                f"values in 0..{n - 1} (or negative indices)."
            )
        picked.append(pairs[s])
    if not picked:
        raise UserError("method.stages is empty; list at least one stage or leave it unset.")
    return picked


def match_spatial(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the spatially larger of two maps to the other's size."""
    if fs.dim() != 4 or ft.dim() != 4:
        return fs, ft
    hs, ws = fs.shape[-2:]
    ht, wt = ft.shape[-2:]
    if (hs, ws) == (ht, wt):
        return fs, ft
    size = (min(hs, ht), min(ws, wt))
    if (hs, ws) != size:
        fs = F.adaptive_avg_pool2d(fs, size)
    if (ht, wt) != size:
        ft = F.adaptive_avg_pool2d(ft, size)
    return fs, ft


@METHODS.register("at")
class AT(Distiller):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) plus cross-entropy."""

    tasks = ("classification", "segmentation")  # backbone stage features either way

    @dataclass
    class Config:
        beta: float = 1000.0  # the loss is beta / 2 * sum over stage pairs
        p: float = 2.0  # attention map: mean over channels of |F|^p
        ce_weight: float = 1.0
        stages: list[int] | None = None  # None = every stage pair

    def setup(self) -> None:
        assert self.teacher is not None
        self.pairs = aligned_stage_pairs(
            self.student.num_stages, self.teacher.num_stages, self.cfg.stages)

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        total = student.logits.new_zeros(())
        for i, j in self.pairs:
            fs, ft = match_spatial(student.stages[i], teacher.stages[j])
            total = total + at_loss(fs, ft, self.cfg.p)
        return {"at": self.cfg.beta / 2 * total}

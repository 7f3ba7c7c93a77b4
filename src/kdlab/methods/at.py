"""AT: attention transfer between student and teacher stage outputs.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. Loss::

    L = ce_weight * CE + beta * sum_j at_loss(F_s^j, F_t^j)

over stage pairs ``j``: the stage outputs after the stem (the residual stages), aligned from
the deepest when the networks have different numbers of them, as both benchmarks pair them
(RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``). A larger map is average-pooled to
the smaller size. Defaults are the CRD benchmark's / mdistiller's CIFAR setting: p = 2,
``beta * sum`` with beta = 1000. The paper's Eq. 2 writes ``beta / 2`` with beta = 1000,
i.e. ``beta: 500`` here; ``include_stem: true`` also pairs the stem outputs (kdlab's former
default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.losses.attention import at_loss
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged import Features, Staged


def aligned_stage_pairs(
    num_student: int, num_teacher: int, stages: list[int] | None
) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs, aligned from the deepest stage.

    ``stages`` selects pairs by their index counted on the shallower network (negative
    indices allowed); None takes every pair.
    """
    return _select(list(range(num_student)), list(range(num_teacher)), stages)


def stage_pairs(
    student: Staged, teacher: Staged, stages: list[int] | None, *, include_stem: bool = False
) -> list[tuple[int, int]]:
    """(student stage, teacher stage) pairs of the stage outputs after each network's stem
    (:meth:`Staged.stages_after_stem`), aligned from the deepest; ``include_stem`` takes
    every stage. ``stages`` selects pairs by their index in that list (negative allowed)."""
    s_idx = list(range(student.num_stages)) if include_stem else student.stages_after_stem()
    t_idx = list(range(teacher.num_stages)) if include_stem else teacher.stages_after_stem()
    return _select(s_idx, t_idx, stages)


def _select(s_idx: list[int], t_idx: list[int], stages: list[int] | None) -> list[tuple[int, int]]:
    n = min(len(s_idx), len(t_idx))
    pairs = list(zip(s_idx[len(s_idx) - n:], t_idx[len(t_idx) - n:], strict=True))
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
        beta: float = 1000.0  # the loss is beta * sum over stage pairs (paper's beta/2: 500)
        p: float = 2.0  # attention map: mean over channels of |F|^p
        ce_weight: float = 1.0
        stages: list[int] | None = None  # None = every pair after the stem
        include_stem: bool = False  # also pair the stem outputs (kdlab's former default)

    def setup(self) -> None:
        assert self.teacher is not None
        self.pairs = stage_pairs(self.student, self.teacher, self.cfg.stages,
                                 include_stem=self.cfg.include_stem)

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
        return {"at": self.cfg.beta * total}

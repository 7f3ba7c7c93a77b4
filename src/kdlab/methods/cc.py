"""Correlation congruence: match the kernel correlation between a batch's embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.losses.logits import kd_loss
from kdlab.losses.relations import cc_loss
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged import Features


@METHODS.register("cc")
class CC(Distiller):
    """CC (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019).

    ``ce_weight * CE + kd_weight * KD + cc_weight * ||C_T - C_S||_F^2 / b^2`` on the
    penultimate embeddings, ``C`` from ``kernel`` (``gaussian``: RBF by its order-``order``
    Taylor expansion with ``gamma``, the paper's choice with P = 2; or ``bilinear``). When the
    embedding sizes differ the student's goes through a trainable linear projection to the
    teacher's size (a training-only extra, not exported); the teacher's embedding is used as
    is, so the target cannot collapse. ``cc_weight`` 0.02 and ``kd_weight`` 0 follow the
    CRD benchmark's CC setting.
    """

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        cc_weight: float = 0.02
        kernel: str = "gaussian"
        gamma: float = 0.4
        order: int = 2
        kd_weight: float = 0.0
        temperature: float = 4.0
        ce_weight: float = 1.0

    def setup(self) -> None:
        c = self.cfg
        if c.kernel not in ("gaussian", "bilinear"):
            raise UserError(f"Unknown method.kernel {c.kernel!r}; use 'gaussian' or 'bilinear'.")
        if c.order < 0:
            raise UserError("method.order (Taylor order P) must be >= 0; the paper uses 2.")
        assert self.teacher is not None
        ds, dt = self.student.embedding_dim, self.teacher.embedding_dim
        self.projection = nn.Linear(ds, dt) if ds != dt else nn.Identity()

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        c = self.cfg
        s = self.projection(student.embedding)
        out: Losses = {"cc": c.cc_weight * cc_loss(s, teacher.embedding, kernel=c.kernel,
                                                    gamma=c.gamma, order=c.order)}
        if c.kd_weight:
            out["kd"] = c.kd_weight * kd_loss(student.logits, teacher.logits, c.temperature)
        return out

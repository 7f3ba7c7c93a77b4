"""Correlation congruence: match the correlation between a batch's embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.logits import kd_loss
from kdlab.methods.shared.relations import cc_benchmark_loss, cc_loss
from kdlab.models.staged.view import Features


@METHODS.register("cc")
class CC(Distiller):
    """CC (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019).

    ``ce_weight * CE + kd_weight * KD + cc_weight * L_CC`` on the penultimate embeddings, in
    one of two formulations (``formulation``):

    * ``benchmark`` (default): the CRD benchmark's CC row (Tian et al., ICLR 2020;
      RepDistiller ``--distill correlation -a 0 -b 0.02``): student and teacher embeddings
      each go through a trainable linear layer to ``feat_dim`` (128), and
      :func:`~kdlab.methods.shared.relations.cc_benchmark_loss` compares them. ``cc_weight`` 0.02
      and ``kd_weight`` 0 are that benchmark's values and belong to this formulation.
    * ``paper``: Eq. 7 of the paper, ``||C_T - C_S||_F^2 / b^2`` with ``C`` from ``kernel``
      (``gaussian``: RBF by its order-``order`` Taylor expansion with ``gamma``, the paper's
      choice with P = 2; or ``bilinear``). When the embedding sizes differ the student's goes
      through a trainable linear projection to the teacher's size; the teacher's embedding is
      used as is, so the target cannot collapse. This term is about 600x smaller than the
      benchmark's at the same weight (gradient about 240x smaller on resnet32x4 ->
      resnet8x4): give it its own ``cc_weight`` (kdlab's former default was this formulation
      with 0.02).

    The linear layers are training-only extras (not exported).
    """

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        cc_weight: float = setting(0.02, range=">= 0")
        # benchmark (RepDistiller's Correlation) | paper
        formulation: str = setting("benchmark", choices=("benchmark", "paper"))
        # benchmark: both embeddings are projected to this size
        feat_dim: int = setting(128, range=">= 1")
        # paper: gaussian | bilinear
        kernel: str = setting("gaussian", choices=("gaussian", "bilinear"))
        gamma: float = setting(0.4, range="> 0")
        order: int = setting(2, range=">= 1")
        kd_weight: float = setting(0.0, range=">= 0")
        temperature: float = setting(4.0, range="> 0")
        ce_weight: float = setting(1.0, range=">= 0")

    def setup(self) -> None:
        c = self.cfg
        assert self.teacher is not None
        ds, dt = self.student.embedding_dim, self.teacher.embedding_dim
        if c.formulation == "benchmark":
            self.projection = nn.Linear(ds, c.feat_dim)
            self.teacher_projection = nn.Linear(dt, c.feat_dim)
        else:
            self.projection = nn.Linear(ds, dt) if ds != dt else nn.Identity()

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        s = self.projection(student.embedding.flatten(1))
        if c.formulation == "benchmark":
            t = self.teacher_projection(teacher.embedding.flatten(1))
            cc = cc_benchmark_loss(s, t)
        else:
            cc = cc_loss(s, teacher.embedding, kernel=c.kernel, gamma=c.gamma, order=c.order)
        out: Losses = {"cc": c.cc_weight * cc}
        if c.kd_weight:
            out["kd"] = c.kd_weight * kd_loss(student.logits, teacher.logits, c.temperature)
        return out

"""CRD: contrastive representation distillation with memory banks and NCE.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020. Student and
teacher embeddings (the pooled penultimate vectors) go through linear heads to 128-d,
L2-normalised codes; every training sample has a slot in a student bank and a teacher bank
(:class:`~kdlab.methods.crd.memory_bank.ContrastMemory`, buffers saved in every checkpoint). Each
code is contrasted with the other network's bank: its own sample as the positive, 16384
other samples as negatives (see below), temperature 0.07, bank momentum 0.5. Defaults
are the paper's CIFAR-100 setting: CE 1, CRD 0.8 (no KD term; add one in a combined recipe).
Under torchrun DDP the banks and Z are synchronised: every process applies every process's
bank updates (rank order) and Z comes from all processes' first batches, so every rank holds
the banks one process would (the authors' code is single-GPU).

The forward pass needs ``index``, the dataset indices of the batch, and the method needs the
training-set size. Negatives (``negatives``) are by default, as the authors' CIFAR loader
draws them (``mode 'exact'``; RepDistiller and mdistiller ``dataset/cifar100.py``), samples
of *other classes*, distinct within a row: this needs the training labels, which kdlab's
trainer hands over (:meth:`use_train_labels`) from loaders that hold them (the in-memory
datasets, image folders). ``negatives: uniform`` draws any other sample with replacement
(the authors' memory's own sampler, kdlab's former default; it needs no labels; not
compared for accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.crd.losses import crd_nce_loss
from kdlab.methods.crd.memory_bank import NEGATIVES, ContrastMemory
from kdlab.models.staged.view import Features


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@METHODS.register("crd")
class CRD(Distiller):
    """Contrastive representation distillation (Tian et al., ICLR 2020) plus CE."""

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        weight: float = setting(0.8, range=">= 0")
        ce_weight: float = setting(1.0, range=">= 0")
        feat_dim: int = setting(128, range=">= 1")
        num_negatives: int = setting(16384, range=">= 1")
        temperature: float = setting(0.07, range="> 0")
        momentum: float = setting(0.5, range="[0, 1]")
        # class (other classes, distinct: the authors') | uniform
        negatives: str = setting("class", choices=NEGATIVES)

    def setup(self) -> None:
        assert self.teacher is not None
        if self.train_size is None:
            raise UserError(
                "CRD keeps one memory slot per training sample and needs the training-set "
                "size; build it through the trainer (or pass train_size=len(dataset))."
            )
        c = self.cfg
        self.embed_student = Embed(self.student.embedding_dim, c.feat_dim)
        self.embed_teacher = Embed(self.teacher.embedding_dim, c.feat_dim)
        self.memory = ContrastMemory(c.feat_dim, self.train_size, c.num_negatives,
                                     c.temperature, c.momentum, negatives=c.negatives)

    def use_train_labels(self, labels: Tensor | None) -> None:
        self.memory.use_labels(labels)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        index = batch.index
        if index is None:
            raise UserError(
                "CRD needs the dataset index of every sample; use a loader that yields "
                "(images, targets, index), as the kdlab trainer does."
            )
        s, t = student.embedding, teacher.embedding
        if not (s.shape[0] == t.shape[0] == index.shape[0]):
            raise UserError(
                f"CRD got {s.shape[0]} student, {t.shape[0]} teacher "
                f"embeddings and {index.shape[0]} indices; give one index per image."
            )
        scores_s, scores_t = self.memory(self.embed_student(s), self.embed_teacher(t),
                                         index.long())
        n = self.memory.num_data
        crd = crd_nce_loss(scores_s, n) + crd_nce_loss(scores_t, n)
        return {"crd": self.cfg.weight * crd}

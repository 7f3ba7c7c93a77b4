"""Online FCFD: teacher and student trained together from scratch.

Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023, App. F, in
the online setting of Deep Mutual Learning
(Zhang et al., CVPR 2018): both networks start from random weights and learn from each
other. The loss is FCFD's Eq. 9 for the student (L_task + L_kd + L_app + sampled L_func /
L_func') plus, for the teacher, its task loss (CE with the labels) and its KD loss toward
the student's output. Everything else - bridges, path sampling, path-aware BatchNorm and
the loss functions - is :class:`~kdlab.methods.fcfd.fcfd.FCFD`'s own code.

Which tensors carry gradient (App. F does not say; our choices):

* Every target is detached: the teacher's logits in L_kd, L_func-KL and L_func', its
  features in L_app and L_func-L2, and the student's logits in the teacher's KD. This is
  how KD targets are treated in DML and in the authors' code (``target.detach()``).
* ``teacher_path_grad: false`` (default): the teacher learns from the two terms App. F adds
  and nothing else. On ``<k, 1>`` paths its later stages act as a fixed lens: the gradient
  of L_func flows *through* them to B_st and the student, but
  their parameters are left out of that graph (``requires_grad`` off during the lens pass);
  on ``<k, 0>`` paths the teacher feature entering B_ts is detached. Otherwise the teacher
  would be pushed to become insensitive to the student's features, a trivial way to lower
  L_func.
* ``teacher_path_grad: true``: as the authors' meta-model code does when the teacher is not
  frozen, the path losses also train the teacher's stages on ``<k, 1>`` paths and its
  early stages through B_ts on ``<k, 0>`` paths (targets stay detached).

Path-aware BatchNorm now covers both networks: the teacher is trained and in train mode, so
its stages ``k+1..N`` and head keep separate running statistics for the bridged student
features of path ``<k, 1>``, exactly as the
student's do for ``<k, 0>`` (FCFD Sec. 2.3, Fig. 3). The pure statistics of both networks
stay in the networks, so each exports as an ordinary model. (The pooled L_app term is the
authors' ReLU + average pool of the bridged feature and runs no teacher module.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Losses
from kdlab.methods.fcfd.fcfd import FCFD
from kdlab.models import build_model
from kdlab.models.staged.view import Features, Staged
from kdlab.tasks import Task


@METHODS.register("online_fcfd")
class OnlineFCFD(FCFD):
    """Online FCFD (Liu et al., ICLR 2023, App. F): Eq. 9 + teacher CE + teacher KD."""

    needs_teacher = False
    trains_teacher = True
    tasks = ("classification",)

    @dataclass
    class Config(FCFD.Config):
        """FCFD's settings (paper defaults, App. A.1) plus the teacher trained alongside."""

        teacher: str | None = None  # model name of the teacher, built untrained
        teacher_ce_weight: float = setting(1.0, range=">= 0")  # the teacher's task loss (App. F)
        # the teacher's KD toward the student (App. F)
        teacher_kd_weight: float = setting(1.0, range=">= 0")
        teacher_path_grad: bool = False  # let L_func / L_func' train the teacher (see module)

        def check(self, where: str, task: str | None = None) -> None:
            """FCFD's rules; SimKD reuses a trained teacher's classifier, so it is refused."""
            super().check(where, task)
            if self.simkd:
                raise UserError(f"online_fcfd does not support {where}.simkd (SimKD reuses a "
                                "trained teacher's classifier); set simkd: false.")

    def __init__(
        self,
        student: Staged,
        teacher: Staged | None = None,
        cfg: OnlineFCFD.Config | None = None,
        *,
        train_size: int | None = None,
        task: Task | None = None,
    ) -> None:
        """``teacher``: a network to train alongside (tests); None builds ``cfg.teacher``."""
        c = cfg if cfg is not None else self.Config()
        if teacher is None:
            if not c.teacher:
                raise UserError(
                    "online_fcfd trains its teacher from scratch with the student: name the "
                    "teacher's architecture in method.teacher (e.g. method.teacher=resnet32x4)."
                )
            in_channels, size, _ = student.input_shape
            teacher = build_model(
                c.teacher, num_classes=student.num_classes, in_channels=in_channels,
                input_size=size,
            )
            param = next(student.parameters(), None)
            if param is not None:
                teacher.to(param.device)
        if teacher.num_classes != student.num_classes:
            raise UserError(
                f"online_fcfd needs teacher and student with the same classes (teacher "
                f"{teacher.num_classes}, student {student.num_classes})."
            )
        super().__init__(student, teacher, c, train_size=train_size, task=task)
        n = self.num_stages
        for k in sorted({k for k, d in self.candidates if d == 1}):
            modules = [teacher.stage_modules(i) for i in range(k, n)]
            modules.append(teacher.head_modules())
            self.path_stats.add_path(self.lens_name(k), modules)
        self.train()

    @contextlib.contextmanager
    def teacher_lens(self, name: str) -> Iterator[None]:
        """The teacher on a bridged student feature: the path's own BN statistics, and,
        unless ``teacher_path_grad``, no gradient for the teacher's parameters."""
        with self.teacher_lens_frozen(), self.path_stats.use(name):
            yield

    @contextlib.contextmanager
    def teacher_group_lens(self, names: list[str], chunk: int) -> Iterator[None]:
        """:meth:`teacher_lens` for the ``<k, 1>`` paths ``names`` run as one batch: each
        path's chunk is normalised with its own batch and running statistics."""
        assert self.teacher is not None
        with self.teacher_lens_frozen(), self.path_stats.chunked(names, chunk, [self.teacher]):
            yield

    @contextlib.contextmanager
    def teacher_lens_frozen(self) -> Iterator[None]:
        """Unless ``teacher_path_grad``, no gradient for the teacher's parameters."""
        frozen = []
        if not self.cfg.teacher_path_grad:
            frozen = [p for p in self.teacher_net.parameters() if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def teacher_pass(self, batch: Batch, student: Features) -> Features:
        """The trained teacher's own pass (train mode, with gradient)."""
        return self.teacher_net.features(batch.images)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        """FCFD's terms with the teacher's pass detached as their targets, then the teacher's
        CE and its KD toward the student (App. F)."""
        c, targets = self.cfg, batch.targets
        losses = self.fcfd_terms(student, teacher.map(Tensor.detach), targets,
                                 t_source=teacher if c.teacher_path_grad else None)
        if c.teacher_ce_weight:
            losses["teacher_ce"] = c.teacher_ce_weight * F.cross_entropy(teacher.logits, targets)
        if c.teacher_kd_weight:
            losses["teacher_kd"] = c.teacher_kd_weight * self._logit_loss(
                teacher.logits, student.logits.detach(), targets
            )
        return losses

    def evaluated(self) -> dict[str, nn.Module]:
        """The student (selects the best checkpoint), then the teacher."""
        return {"student": self.student, "teacher": self.teacher_net}

    def exported(self) -> dict[str, nn.Module]:
        """Both networks as ordinary models."""
        return {"student": self.student.net, "teacher": self.teacher_net.net}

"""FRSKD: feature refinement via self-knowledge distillation.

Ji et al., "Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge
Distillation", CVPR 2021. No pretrained teacher: a *self-teacher* (a BiFPNc pyramid and a
classifier, :class:`kdlab.methods.frskd.bifpn.BiFPNc`) reads the student's own stage
features, refines them, and teaches the student back through soft labels and attention maps.

Loss (paper Eq. 6)::

    L = CE(student) + CE(self-teacher) + alpha * L_KD + beta * L_F

- ``L_KD``: KL(self-teacher soft labels || student soft labels) at temperature ``tau``,
  scaled by ``tau^2`` (Hinton et al. 2015);
- ``L_F``: attention transfer (channel-pooled, L2-normalised spatial maps, Zagoruyko &
  Komodakis 2017) between each refined map and the student's feature at the same level,
  summed over levels (:func:`kdlab.methods.shared.attention.at_loss`).

Gradient flow, as the authors' training loop (``classification/utils.py``: the BiFPN reads
the student's features as they are; only the targets are detached): the self-teacher's CE
trains the self-teacher *and*, through the features it reads, the student's backbone; its
soft labels and refined maps are detached targets in ``L_KD`` and ``L_F``, so the
distillation losses update the student only. ``detach_features: true`` feeds the
self-teacher detached features instead (kdlab's former behaviour): the self-teacher's CE
then never reaches the student (on a freshly initialised resnet8, 1x28x28, batch 64, the
student's gradient norm is 2.26 with the authors' flow and 1.81 without that term).

Defaults follow the authors' CIFAR-100 setting (their README: alpha 2, beta 100; their code:
temperature 4, width 2, depth 2, one BiFPN layer). The paper searches alpha in {1, 2, 3} and
beta in {100, 200} per dataset. ``beta: 0`` is the paper's FRSKD\\F ablation (soft labels only).
FRSKD+SLA (the paper's self-supervised label augmentation variant) is the method
``frskd_sla`` (:mod:`kdlab.methods.frskd.frskd_sla`).

Which features: by default the stages after the network's stem, as the authors feed the
residual stages (``layer1..4`` of their CIFAR and ImageNet ResNets, ``block1..3`` of their
WRN), never the stem convolution (:func:`default_levels`); ``levels: N`` takes the last
``N`` stages instead. The self-teacher follows the authors' BiFPNc code too (see
:mod:`kdlab.methods.frskd.bifpn` for where).

Cost: a training step runs the student once and the self-teacher once. On the ``cpu`` bench
pair (resnet8, 1x28x28, batch 64) FRSKD does 1.00x KD's FLOPs but its CPU step takes
1.6-2.0x KD's: the self-teacher is twice the student's width at every level and keeps
~4.5x the student's activations for the backward. Numbers and profile:
benchmarks/results/frskd_cost_cpu.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.frskd.bifpn import BiFPNc
from kdlab.methods.shared.attention import at_loss
from kdlab.methods.shared.logits import kd_loss
from kdlab.models.staged.view import Features, Staged
from kdlab.tasks import Task


def default_levels(student: Staged) -> int:
    """How many of the last stages FRSKD feeds by default: those after the network's stem.

    The authors feed their networks' residual stages, never the stem
    (:meth:`Staged.stages_after_stem`). At least two levels.
    """
    return max(2, len(student.stages_after_stem()))


class SelfTeacherView(nn.Module):
    """Images -> self-teacher logits (student features, detached, through the BiFPNc).

    For evaluation only: the trainer evaluates each network on its own, so this runs the
    student's forward again; training (:meth:`FRSKD.teacher_pass`) runs it once per step.
    """

    def __init__(self, student: Staged, self_teacher: BiFPNc, levels: int) -> None:
        super().__init__()
        self.student = student
        self.self_teacher = self_teacher
        self.levels = levels

    def forward(self, images: Tensor) -> Tensor:
        feats = self.student.features(images).stages[-self.levels :]
        return self.self_teacher([f.detach() for f in feats])[1]


@METHODS.register("frskd")
class FRSKD(Distiller):
    """FRSKD self-distillation (Ji et al., CVPR 2021); ``beta: 0`` gives FRSKD\\F."""

    needs_teacher = False

    @dataclass
    class Config:
        # soft-label (KL) weight; paper: 1, 2 or 3 per dataset
        alpha: float = setting(2.0, range=">= 0")
        # attention-transfer weight; paper: 100 or 200; 0 = FRSKD\F
        beta: float = setting(100.0, range=">= 0")
        temperature: float = setting(4.0, range="> 0")
        # self-teacher channels per level: width x student channels
        width: float = setting(2.0, range="> 0")
        depth: int = setting(2, range=">= 1")  # depth-wise separable convolutions per fusion node
        repeat: int = setting(1, range=">= 1")  # stacked BiFPN layers
        # use the last N student stages (None = after the stem)
        levels: int | None = setting(None, range=">= 2")
        detach_features: bool = False  # True: the self-teacher's CE stops at its input

    def __init__(
        self,
        student: Staged,
        teacher: Staged | None = None,
        cfg: FRSKD.Config | None = None,
        *,
        train_size: int | None = None,
        task: Task | None = None,
    ) -> None:
        super().__init__(student, None, cfg, train_size=train_size, task=task)

    def setup(self) -> None:
        """Build the self-teacher (BiFPNc) on the last ``levels`` stages of the student (the
        settings' ranges are on their fields; the student bounds ``levels``)."""
        student, c = self.student, self.cfg
        info = student.stage_info
        levels = default_levels(student) if c.levels is None else c.levels
        if not 2 <= levels <= len(info):
            raise UserError(
                f"FRSKD needs 2 to {len(info)} feature levels for this student, got "
                f"levels={c.levels}; set method.levels in that range or leave it out."
            )
        used = info[-levels:]
        if any(s.height == 1 and s.width == 1 for s in used):
            raise UserError(
                "FRSKD's self-teacher needs spatial stage outputs (feature maps); this student "
                "has a 1x1 stage among the last levels: lower method.levels."
            )
        self.levels = levels
        self.self_teacher = BiFPNc(
            [s.channels for s in used],
            student.num_classes,
            width=c.width,
            depth=c.depth,
            repeat=c.repeat,
        )

    def _self_teacher(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """The self-teacher's refined maps and logits, fed the student's features (detached
        with ``detach_features``)."""
        return self.self_teacher([f.detach() for f in feats] if self.cfg.detach_features
                                 else feats)

    def teacher_pass(self, batch: Batch, student: Features) -> tuple[list[Tensor], Tensor]:
        """The self-teacher on the student's last ``levels`` stage outputs: its refined maps
        and logits (trained, with gradient)."""
        return self._self_teacher(student.stages[-self.levels :])

    def losses(self, batch: Batch, student: Features,
               teacher: tuple[list[Tensor], Tensor]) -> Losses:
        c = self.cfg
        refined, st_logits = teacher
        losses: Losses = {"self_teacher_ce": F.cross_entropy(st_logits, batch.targets)}
        if c.alpha > 0:
            losses["kd"] = c.alpha * kd_loss(student.logits, st_logits.detach(), c.temperature)
        if c.beta > 0:
            feats = student.stages[-self.levels :]
            feat = sum(at_loss(f, r.detach()) for f, r in zip(feats, refined, strict=True))
            losses["feat"] = c.beta * feat
        return losses

    def evaluated(self) -> dict[str, nn.Module]:
        """The student (selects the best checkpoint), then the self-teacher."""
        return {
            "student": self.student,
            "self_teacher": SelfTeacherView(self.student, self.self_teacher, self.levels),
        }

"""SimKD: the student reuses the teacher's classifier through a projector.

Chen, Mei, Wang, Feng & Chen, "Knowledge Distillation with the Reused Teacher Classifier",
CVPR 2022. The student's last stage output goes through a projector (1x1 -> 3x3 -> 1x1
convs with BN and ReLU, bottleneck factor 2) to the teacher's last feature shape; the loss
is the MSE to the teacher's feature, and the logits are the (frozen) teacher head applied to
the projected feature. Defaults are the authors' CIFAR setting: feature weight 1, no CE.

The projector and the copied teacher head are part of the deployed student
(:class:`~kdlab.methods.shared.simkd_projector.SimKDStudent`), used for evaluation and export.
Inference cost it adds (:meth:`SimKD.extra_inference_cost` measures it for any pair), e.g.
ResNet8x4 from ResNet32x4 on CIFAR (256 -> 128 -> 128 -> 256 channels at 8x8): projector
214,016 parameters and 13.6 M multiply-accumulates per image, on top of ResNet8x4's about
1.23 M parameters and 177 M MACs (+17 % parameters, +8 % MACs); the reused teacher
classifier replaces the student's own one of the same size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.simkd_projector import ReusedHead, SimKDProjector, SimKDStudent, conv_cost
from kdlab.models.staged.view import Features


@dataclass
class ProjectedStudent:
    """SimKD's student pass: the projected last feature and the reused head's logits."""

    projected: Tensor
    logits: Tensor


@METHODS.register("simkd")
class SimKD(Distiller):
    """SimKD (Chen et al., CVPR 2022): projector + reused teacher classifier."""

    #: its student is another network (projector + reused head), which combo parts cannot share
    combinable = False

    @dataclass
    class Config:
        factor: int = setting(2, range=">= 1")  # projector bottleneck: teacher channels // factor
        # MSE(projected student feature, teacher feature)
        feature_weight: float = setting(1.0, range=">= 0")
        # the authors train with the feature loss alone
        ce_weight: float = setting(0.0, range=">= 0")

    def setup(self) -> None:
        t = self.teacher
        assert t is not None
        s_info, t_info = self.student.stage_info[-1], t.stage_info[-1]
        self.projector = SimKDProjector(s_info.channels, t_info.channels, self.cfg.factor)
        head = list(t.head_modules())
        n_cls = len(t.classifier_modules())
        self.head = ReusedHead(
            copy.deepcopy(head[: len(head) - n_cls]),
            t._pool,  # the teacher's pooling function (a plain callable, no state)
            copy.deepcopy(head[len(head) - n_cls :]),
        )
        # Built from the same modules; kept out of the module tree so that the state_dict
        # holds each weight once.
        object.__setattr__(self, "_deployable", SimKDStudent(
            self.student, self.projector, self.head, (t_info.height, t_info.width)))

    @property
    def deployable(self) -> SimKDStudent:
        return self._deployable

    def student_pass(self, batch: Batch) -> ProjectedStudent:
        """The deployable student: backbone, projector and the reused teacher head."""
        projected, logits = self.deployable.features(batch.images)
        return ProjectedStudent(projected, logits)

    def losses(self, batch: Batch, student: ProjectedStudent, teacher: Features) -> Losses:
        target = teacher.stages[-1]
        if target.shape[-2:] != student.projected.shape[-2:]:
            target = F.adaptive_avg_pool2d(target, student.projected.shape[-2:])
        return {"simkd": self.cfg.feature_weight * F.mse_loss(student.projected, target)}

    def evaluated(self) -> dict[str, nn.Module]:
        return {"student": self.deployable}

    def exported(self) -> dict[str, nn.Module]:
        return {"student": self.deployable}

    def extra_inference_cost(self) -> dict[str, int]:
        """Parameters and multiply-accumulates per image that the projector adds."""
        s, t = self.student.stage_info[-1], self.teacher.stage_info[-1]
        x = torch.zeros(1, s.channels, min(s.height, t.height), min(s.width, t.width),
                        device=next(self.projector.parameters()).device)
        return {
            "params": sum(p.numel() for p in self.projector.parameters()),
            "macs": conv_cost(self.projector, x),
        }

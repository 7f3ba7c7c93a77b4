"""SimKD's projector and the deployable student it builds.

Chen, Mei, Wang, Feng & Chen, "Knowledge Distillation with the Reused Teacher Classifier",
CVPR 2022.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.models.staged.view import Staged


def conv_bn_relu(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class SimKDProjector(nn.Sequential):
    """1x1 -> 3x3 -> 1x1 conv bottleneck (BN + ReLU after each) from student to teacher
    channels; the middle width is ``teacher_channels // factor`` (factor 2 in the paper)."""

    def __init__(self, student_channels: int, teacher_channels: int, factor: int = 2) -> None:
        mid = max(1, teacher_channels // factor)
        super().__init__(*conv_bn_relu(student_channels, mid, 1), *conv_bn_relu(mid, mid, 3),
                         *conv_bn_relu(mid, teacher_channels, 1))


class ReusedHead(nn.Module):
    """The teacher's head (pre-pool modules, pooling, classifier), copied out of it.

    Its parameters are frozen: SimKD reuses the teacher classifier as it is.
    """

    def __init__(self, pre_pool: list[nn.Module], pool: Callable[[Tensor], Tensor],
                 classifier: list[nn.Module]) -> None:
        super().__init__()
        outside = getattr(pool, "outside", None)
        if outside:
            raise UserError(
                f"SimKD reuses the teacher's head, but this teacher pools with weights of its "
                f"own ({', '.join(outside[:2])}) that a copied head cannot hold; pick a teacher "
                "whose head is pooling and a classifier (e.g. timm/resnet18, "
                "timm/efficientnet_b0).")
        self.pre_pool = nn.ModuleList(pre_pool)
        self.classifier = nn.ModuleList(classifier)
        self._pool = pool
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ReusedHead:
        """Always in eval mode: the teacher's head (and any BN in it) stays as trained."""
        return super().train(False)

    def forward(self, feature: Tensor) -> Tensor:
        for m in self.pre_pool:
            feature = m(feature)
        x = self._pool(feature)
        for m in self.classifier:
            x = m(x)
        return x


class SimKDStudent(nn.Module):
    """The deployable SimKD student: backbone, projector, reused teacher head.

    ``forward(images)`` gives the logits used for evaluation; ``features(images)`` also
    returns the projected last feature (what the loss compares with the teacher's).
    """

    def __init__(self, backbone: Staged, projector: nn.Module, head: ReusedHead,
                 teacher_size: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.head = head
        self.teacher_size = tuple(teacher_size)

    def project(self, last: Tensor) -> Tensor:
        """Student's last stage output -> teacher-shaped feature (pooled first if larger)."""
        if last.shape[-2] > self.teacher_size[0] or last.shape[-1] > self.teacher_size[1]:
            last = F.adaptive_avg_pool2d(last, self.teacher_size)
        return self.projector(last)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.backbone.stem_forward(images)
        for i in range(self.backbone.num_stages):
            x = self.backbone.stage_forward(i, x)
        projected = self.project(x)
        return projected, self.head(projected)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)[1]


def conv_cost(module: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of the convolutions in ``module`` for one input like ``x[:1]``."""
    total = 0

    def hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        total += out[0].numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.Conv2d)]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(x[:1])
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total

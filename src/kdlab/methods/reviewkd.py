"""ReviewKD: knowledge review with attention-based fusion and the hierarchical context loss.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021. The
student's stage outputs plus its pooled embedding (as a 1x1 map) are visited deepest first;
each level's ABF fuses it with the residual of the deeper level and maps it to the teacher's
shape at that level; HCL compares every fused map with the teacher's feature. Defaults are
the authors' CIFAR setting: CE 1, review loss 1 ramped up linearly over the first 20 epochs,
ABF width ``min(512, student embedding channels)``. The features are the staged view's stage
outputs (post-activation where the network ends a stage with a ReLU); the authors' code
takes pre-ReLU features. All stages are reviewed: for the zoo's networks stage 0 holds the
stem, which the authors' CIFAR ResNets do not review (their ``in_channels`` list the residual
stages and the embedding); on resnet20 -> resnet8 this costs a second 64-channel ABF at
28x28 (2.15x KD's FLOPs per step instead of 1.73x; benchmarks/results/reviewkd_cost_cpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.losses.review import hcl_loss
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged import Features, Staged
from kdlab.nn.abf import ABF


def _levels(out: Features, n: int) -> list[Tensor]:
    """The last ``n`` stage outputs and the embedding as a ``(b, c, 1, 1)`` map."""
    return [*out.stages[len(out.stages) - n:], out.embedding[:, :, None, None]]


@METHODS.register("reviewkd")
class ReviewKD(Distiller):
    """ReviewKD (Chen et al., CVPR 2021): ABF fusion + hierarchical context loss."""

    @dataclass
    class Config:
        weight: float = 1.0  # review (HCL) loss weight after warm-up
        ce_weight: float = 1.0
        warmup_epochs: int = 20  # the review weight grows linearly over these epochs
        mid_channels: int | None = None  # ABF width; None = min(512, student embedding dim)
        hcl_levels: list[int] = field(default_factory=lambda: [4, 2, 1])  # pooled HCL sizes

    def __init__(self, student: Staged, teacher: Staged | None, cfg: object | None = None,
                 *, train_size: int | None = None) -> None:
        super().__init__(student, teacher, cfg, train_size=train_size)
        t = self.teacher
        assert t is not None
        self.num_stages = min(student.num_stages, t.num_stages)
        s_info = student.stage_info[student.num_stages - self.num_stages:]
        t_info = t.stage_info[t.num_stages - self.num_stages:]
        in_ch = [i.channels for i in s_info] + [student.embedding_dim]
        out_ch = [i.channels for i in t_info] + [t.embedding_dim]
        self.out_sizes = [(i.height, i.width) for i in t_info] + [(1, 1)]
        mid = self.cfg.mid_channels or min(512, in_ch[-1])
        if mid < 1:
            raise UserError("method.mid_channels must be a positive integer.")
        # abfs[i] serves level i (shallow to deep); the deepest one does not fuse.
        self.abfs = nn.ModuleList(
            ABF(c_in, mid, c_out, fuse=i < len(in_ch) - 1)
            for i, (c_in, c_out) in enumerate(zip(in_ch, out_ch, strict=True))
        )
        self._ramp = 1.0 if self.cfg.warmup_epochs <= 0 else 1.0 / self.cfg.warmup_epochs

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        w = self.cfg.warmup_epochs
        self._ramp = 1.0 if w <= 0 else min((epoch + 1) / w, 1.0)

    def review(self, levels: list[Tensor]) -> list[Tensor]:
        """Student levels (shallow to deep) -> teacher-shaped fused maps, same order."""
        results: list[Tensor] = [levels[0]] * len(levels)
        residual = None
        for i in reversed(range(len(levels))):
            results[i], residual = self.abfs[i](levels[i], residual, self.out_sizes[i])
        return results

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        fused = self.review(_levels(student, self.num_stages))
        loss = hcl_loss(fused, _levels(teacher, self.num_stages), tuple(self.cfg.hcl_levels))
        return {"review": self.cfg.weight * self._ramp * loss}

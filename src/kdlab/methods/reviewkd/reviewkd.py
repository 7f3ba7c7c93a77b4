"""ReviewKD: knowledge review with attention-based fusion and the hierarchical context loss.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021. The
student's stage outputs plus its pooled embedding (as a 1x1 map) are visited deepest first;
each level's ABF fuses it with the residual of the deeper level and maps it to the teacher's
shape at that level; HCL compares every fused map with the teacher's feature. Defaults are
the authors' CIFAR code's: CE 1, review loss 1 (``--kd-loss-weight``'s default; their script
sets 0.6 to 8 per pair, and so do the CIFAR-100 recipes) ramped up linearly over the first 20
epochs, ABF width ``min(512, student embedding channels)``.

Which levels: as in the authors' code, the stages after the stem
(:meth:`Staged.stages_after_stem`) plus the pooled embedding; never the stem. Their CIFAR
ResNets review ``layer1..3`` and the pool (``in_channels = [16, 32, 64, 64]`` for resnet20;
the stem output ``f0`` is dropped on both sides), their ImageNet ResNet-18 ``layer1..4`` and
the pool (``[64, 128, 256, 512, 512]``). The zoo's staged views hold the stem in stage 0, so
resnet8 reviews its 3 residual stages and the embedding (4 ABFs); a view that names its stem
apart reviews all its stages. Student and teacher are paired from the deepest level up.
``levels: N`` reviews the last ``N`` stages of each network instead (plus the embedding).
On resnet20 -> resnet8 dropping the stem level took ReviewKD from 2.15x to 1.73x KD's FLOPs
per step (benchmarks/results/reviewkd_cost_cpu.md).

Teacher features (``teacher_features``): ``pre_relu`` (default) compares the fused maps with
the teacher's stage outputs *before* their last ReLU, as the authors' CIFAR code
(``teacher(images, is_feat=True, preact=True)``) and mdistiller (``preact_feats``) do; the
pre-ReLU maps are tapped as OFD taps them (:class:`~kdlab.methods.ofd.PreReLUTap`), the
embedding level stays the pooled vector. ``stage_outputs`` compares with the stage outputs as
the staged view gives them (post-ReLU on ResNets; kdlab's former default; not compared for
accuracy). The student side is its stage outputs either way (the authors' CIFAR code; their
ImageNet code and mdistiller's ImageNet configuration take the student's pre-ReLU features
too, which kdlab does not offer).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.ofd.ofd import PreReLUTap
from kdlab.methods.reviewkd.abf import ABF, review
from kdlab.methods.reviewkd.losses import hcl_loss
from kdlab.models.staged.view import Features


def _levels(out: Features, n: int) -> list[Tensor]:
    """The last ``n`` stage outputs and the embedding as a ``(b, c, 1, 1)`` map."""
    return [*out.stages[len(out.stages) - n:], out.embedding[:, :, None, None]]


@METHODS.register("reviewkd")
class ReviewKD(Distiller):
    """ReviewKD (Chen et al., CVPR 2021): ABF fusion + hierarchical context loss."""

    @dataclass
    class Config:
        weight: float = setting(1.0, range=">= 0")  # review (HCL) loss weight after warm-up
        ce_weight: float = setting(1.0, range=">= 0")
        # the review weight grows linearly over these epochs
        warmup_epochs: int = setting(20, range=">= 0")
        # ABF width; None = min(512, student embedding dim)
        mid_channels: int | None = setting(None, range=">= 1")
        hcl_levels: list[int] = setting(factory=lambda: [4, 2, 1], range=">= 1")  # pooled HCL sizes
        # review the last N stages; None = those after the stem
        levels: int | None = setting(None, range=">= 1")
        # pre_relu (the authors') | stage_outputs
        teacher_features: str = setting("pre_relu", choices=("pre_relu", "stage_outputs"))

    def setup(self) -> None:
        t = self.teacher
        assert t is not None
        most = min(self.student.num_stages, t.num_stages)
        after_stem = min(len(self.student.stages_after_stem()), len(t.stages_after_stem()))
        # a one-stage network with its stem in that stage still gets a spatial level
        n = max(1, after_stem) if self.cfg.levels is None else self.cfg.levels
        if n > most:
            raise UserError(
                f"method.levels must be between 1 and {most} for this pair (the stages "
                f"of the shallower network), got {self.cfg.levels}; set it or leave it out."
            )
        self.num_stages = n  # stage levels reviewed, the last n of each network
        s_info = self.student.stage_info[self.student.num_stages - self.num_stages:]
        t_info = t.stage_info[t.num_stages - self.num_stages:]
        in_ch = [i.channels for i in s_info] + [self.student.embedding_dim]
        out_ch = [i.channels for i in t_info] + [t.embedding_dim]
        self.out_sizes = [(i.height, i.width) for i in t_info] + [(1, 1)]
        mid = self.cfg.mid_channels or min(512, in_ch[-1])
        # abfs[i] serves level i (shallow to deep); the deepest one does not fuse.
        self.abfs = nn.ModuleList(
            ABF(c_in, mid, c_out, fuse=i < len(in_ch) - 1)
            for i, (c_in, c_out) in enumerate(zip(in_ch, out_ch, strict=True))
        )
        self._ramp = 1.0 if self.cfg.warmup_epochs <= 0 else 1.0 / self.cfg.warmup_epochs
        self.teacher_tap: PreReLUTap | None = None
        if self.cfg.teacher_features == "pre_relu":
            reviewed = list(range(t.num_stages - self.num_stages, t.num_stages))
            self.teacher_tap = PreReLUTap(t, reviewed, "teacher", always=True,
                                          method="ReviewKD")

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        w = self.cfg.warmup_epochs
        self._ramp = 1.0 if w <= 0 else min((epoch + 1) / w, 1.0)

    def review(self, levels: list[Tensor]) -> list[Tensor]:
        """Student levels (shallow to deep) -> teacher-shaped fused maps, same order."""
        return review(self.abfs, levels, self.out_sizes)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        fused = self.review(_levels(student, self.num_stages))
        targets_t = _levels(teacher, self.num_stages)
        if self.teacher_tap is not None:  # the teacher pass just run, before its ReLUs
            targets_t[:-1] = [f.clone() for f in self.teacher_tap.features(teacher)]
        loss = hcl_loss(fused, targets_t, tuple(self.cfg.hcl_levels))
        return {"review": self.cfg.weight * self._ramp * loss}

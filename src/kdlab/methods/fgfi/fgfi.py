"""FGFI: fine-grained feature imitation on a two-stage detector's FPN (``fgfi``, detection only).

Wang, Yuan, Zhang & Feng, "Distilling Object Detectors with Fine-grained Feature Imitation",
CVPR 2019 (FCFD's Table 3 baseline). The student imitates the teacher's feature only at the
locations near the objects (:mod:`.mask`), through an adaptation layer (:mod:`.adapter`):
``L = L_det + weight * 1 / (2 N_p) sum I (f_adap(s) - t)^2`` (:mod:`.losses`).

The authors' settings (their py-faster-rcnn code; one VGG feature map, batch 1), kdlab's
defaults: ``weight`` (their ``imitation_loss_weigth``) 0.01, ``psi`` 0.5, the imitation loss
multiplied by 0 for the first ``warmup_steps`` = 400 training steps (the authors' ``--ws``;
they count the first 400 iterations of epoch 1, kdlab the first 400 steps of the run), the
strict ``IoU > psi * max IoU`` over every anchor, and ``1 / (2 N_p)`` over the batch.

Settings that extend it to an FPN (there is no FPN code by the authors, and neither the FCFD
nor the ReviewKD repository has FGFI code; each choice below is a setting):

- ``levels``: the FPN levels imitated; every level the RPN reads by default (torchvision's
  ``"0".."3"``, ``"pool"``: Detectron2's p2-p6), each with its own mask from its own anchors.
- ``scope``: ``"image"`` (default) takes each box's maximum IoU over the anchors of every level
  together, as the authors take it over every anchor of their single map; ``"level"`` per
  level.
- ``legacy_iou``: False (default) uses the continuous IoU the detector's matcher uses; True
  the authors' ``+1`` pixel convention (what the parity fixture checks).
- ``relu``: the authors' adaptation layer ends with a ReLU because their target is
  post-ReLU; FPN outputs are not, so the default is False.
- one adaptation layer per level (``shared_adapter: false``), or one for every level.
- ``N_p`` counts the masked locations of every level and image.

The teacher's ROI head is not run (FGFI reads its FPN features only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Losses
from kdlab.methods.detection_base import DetectionDistiller, TeacherROI
from kdlab.methods.fgfi.adapter import Adaptation
from kdlab.methods.fgfi.losses import fgfi_loss
from kdlab.methods.fgfi.mask import SCOPES, batch_masks
from kdlab.tasks.detection.models import DetectionOutput

#: the key of the one adaptation layer with ``shared_adapter``
SHARED = "shared"


@METHODS.register("fgfi")
class FGFI(DetectionDistiller):
    """FGFI (Wang et al., CVPR 2019): detector losses + weight * masked FPN imitation."""

    reads_teacher_roi = False

    @dataclass
    class Config:
        ce_weight: float = setting(1.0, range=">= 0")  # the detector's own losses
        weight: float = setting(0.01, range=">= 0")  # the imitation loss weight (authors' --ilw)
        # a box's threshold is psi * its max IoU with any anchor
        psi: float = setting(0.5, range="[0, 1]")
        # imitation multiplied by 0 for these first steps (--ws)
        warmup_steps: int = setting(400, range=">= 0")
        levels: list[str] | None = None  # FPN levels imitated; None = all
        # image | level: where each box's max IoU is taken
        scope: str = setting("image", choices=SCOPES)
        legacy_iou: bool = False  # the authors' +1 pixel IoU convention
        relu: bool = False  # ReLU after the adaptation conv (authors: post-ReLU target)
        shared_adapter: bool = False  # one adaptation layer for every level
        inherit: bool = False  # FCFD App. E: start from the teacher's FPN, RPN and ROI heads

    def setup(self) -> None:
        super().setup()
        c = self.cfg
        levels = self.s_det.fpn_levels
        self.levels = levels if c.levels is None else [str(k) for k in c.levels]
        unknown = [k for k in self.levels if k not in levels]
        if unknown or not self.levels:
            raise UserError(f"method.levels {c.levels} must name FPN levels of the student "
                            f"({', '.join(levels)}).")
        cin, cout = self.s_det.fpn_channels, self.t_det.fpn_channels
        names = [SHARED] if c.shared_adapter else self.levels
        self.adapters = nn.ModuleDict({k: Adaptation(cin, cout, c.relu) for k in names})
        #: training steps seen (the warm-up's clock; saved with the checkpoint)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def adapter(self, level: str) -> nn.Module:
        """The adaptation layer of FPN level ``level``."""
        return self.adapters[SHARED if self.cfg.shared_adapter else level]

    def masks(self, student: DetectionOutput) -> dict[str, Tensor]:
        """FGFI's mask per imitated level, ``(B, H, W)``, from the student's anchors and the
        resized ground-truth boxes."""
        c = self.cfg
        every = dict(zip(self.s_det.fpn_levels, self.s_det.anchor_grids(student), strict=True))
        anchors = [every[k] for k in self.levels] if c.scope == "level" else list(every.values())
        names = self.levels if c.scope == "level" else list(every)
        with torch.no_grad():
            masks = batch_masks(anchors, student.gt_boxes, c.psi, legacy_iou=c.legacy_iou,
                                scope=c.scope)
        return {k: m for k, m in zip(names, masks, strict=True) if k in self.levels}

    def losses(self, batch: Batch, student: DetectionOutput, teacher: TeacherROI) -> Losses:
        c = self.cfg
        if not c.weight:
            return {}
        masks = self.masks(student)
        adapted = [self.adapter(k)(student.fpn[k]) for k in self.levels]
        loss = fgfi_loss(adapted, [teacher.fpn[k] for k in self.levels],
                         [masks[k] for k in self.levels])
        # the authors' warm-up multiplies the loss by 0 (the graph is kept: DDP sees every
        # parameter used); a tensor comparison, so no Python branch on the counter
        on = (self.steps >= c.warmup_steps).to(loss.dtype)
        if self.training:
            self.steps += 1
        return {"fgfi": c.weight * on * loss}

"""FCFD for two-stage detectors, exactly as the FCFD paper's App. D.1 (Eq. 19).

Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023, App. D:
the features matched are the FPN outputs ``F^k`` (all levels); the lens is the ROI head.

* ``app``   - ``sum_k L2(F_t^k, B_st^k(F_s^k))`` (Eq. 13, every FPN level).
* ``func_kl`` + ``func_l2`` - ``L_func`` (Eqs. 14-15): the teacher's ROI head on
  ``{B_st^k(F_s^k)}`` against the teacher's ROI head on ``{F_t^k}``: KL of the class
  probabilities (T = 1) + L2 of the box deltas.
* ``funcp_kl`` + ``funcp_l2`` - ``L_func'`` (Eqs. 17-18): the student's ROI head on
  ``{B_ts^k(F_t^k)}`` against the teacher's outputs, same form.
* ``kd`` + ``kd_l2`` - ``L_kd`` (Eq. 16): the student's ROI head on its own features against
  the teacher's, same form (the outputs of the student's own training pass: the same
  proposals through the same head).
* ``ce`` - ``L_task``: the detector's own RPN and ROI losses.

Every term uses the student's sampled proposals R (see :mod:`kdlab.methods.detection_base`);
every weight is 1 (App. D.2 and the authors' configs: ``APP_WEIGHT``, ``KD_WEIGHT``,
``ROIL2_WEIGHT`` = 1); no path sampling. The ROI terms are averaged over R by default, as in
the authors' code (``reduction``, see :mod:`kdlab.methods.shared.detection`).

Bridges (the authors' ``build_bridges``): per FPN level, a 3x3 conv + BatchNorm each way.
``B_st`` exists for every FPN level (``L_app`` reads them all); ``B_ts`` only for the levels
the student's ROI head reads (the authors also build one for the max-pooled level, which no
loss reaches). Gradients: ``L_app`` and ``L_func`` reach the student's backbone and FPN through
``B_st`` (and through the frozen teacher ROI head, whose parameters get none); ``L_func'``
reaches ``B_ts`` and the student's ROI head; ``L_kd`` the whole student path of its ROI
outputs. When the student's box head has BatchNorm (torchvision's ``_v2`` detectors), the
``L_func'`` pass keeps its own running statistics there
(:class:`~kdlab.methods.fcfd.path_bn.PathStats`), so the exported student's statistics are those
of its own features.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdlab.core.settings import setting
from kdlab.methods.base import Batch, Losses
from kdlab.methods.detection_base import DetectionDistiller, TeacherROI
from kdlab.methods.fcfd.path_bn import PathStats, batchnorms
from kdlab.methods.shared.detection import (
    REDUCTIONS,
    fpn_app_loss,
    fpn_bridges,
    roi_kl_loss,
    roi_l2_loss,
)
from kdlab.tasks.detection.models import DetectionOutput

#: the PathStats name of the L_func' pass through the student's ROI head
T2S = "t2s_roi"


class FCFDDetection(DetectionDistiller):
    """FCFD on a detector (App. D): L_task + sum_k L_app^k + L_func + L_func' + L_kd."""

    @dataclass
    class Config:
        """Weights of every term (1 in the paper and the authors' code), the temperature of
        the KL terms (1), the ROI reduction and the inheriting strategy (App. E)."""

        ce_weight: float = setting(1.0, range=">= 0")  # L_task: the detector's own losses
        app_weight: float = setting(1.0, range=">= 0")  # sum_k L_app^k
        func_kl_weight: float = setting(1.0, range=">= 0")  # L_func, KL part
        func_l2_weight: float = setting(1.0, range=">= 0")  # L_func, box-delta L2 part
        funcp_kl_weight: float = setting(1.0, range=">= 0")  # L_func', KL part
        funcp_l2_weight: float = setting(1.0, range=">= 0")  # L_func', box-delta L2 part
        kd_weight: float = setting(1.0, range=">= 0")  # L_kd, KL part
        kd_l2_weight: float = setting(1.0, range=">= 0")  # L_kd, box-delta L2 part
        temperature: float = setting(1.0, range="> 0")
        # mean (authors' code) | sum (paper's sum over proposals)
        reduction: str = setting("mean", choices=REDUCTIONS)
        inherit: bool = False  # App. E: start from the teacher's FPN, RPN and ROI heads

    def setup(self) -> None:
        super().setup()
        s, t = self.s_det, self.t_det
        self.b_st = fpn_bridges(s, t, s.fpn_levels, "student -> teacher")
        self.b_ts = fpn_bridges(t, s, s.roi_levels, "teacher -> student")
        self.path_stats = PathStats()
        box_head = s.roi_heads.box_head
        self.has_path_stats = bool(batchnorms([box_head]))
        if self.has_path_stats:
            self.path_stats.add_path(T2S, [box_head])

    def _pair(self, out: tuple[Tensor, Tensor], teacher: TeacherROI, kl_weight: float,
              l2_weight: float) -> tuple[Tensor, Tensor]:
        c = self.cfg
        kl = roi_kl_loss(out[0], teacher.logits, c.temperature, c.reduction)
        l2 = roi_l2_loss(out[1], teacher.box_deltas, c.reduction)
        return kl_weight * kl, l2_weight * l2

    def losses(self, batch: Batch, student: DetectionOutput, teacher: TeacherROI) -> Losses:
        assert student.logits is not None
        assert student.box_deltas is not None
        c = self.cfg
        proposals, sizes = student.proposals, student.image_sizes
        out: Losses = {}
        levels = list(self.b_st) if c.app_weight else self.s_det.roi_levels
        bridged = {k: self.b_st[k](student.fpn[k]) for k in levels}
        if c.app_weight:
            out["app"] = c.app_weight * fpn_app_loss(bridged, teacher.fpn)
        if c.func_kl_weight or c.func_l2_weight:  # the teacher's ROI head as the lens
            st = self.t_det.lens(bridged, proposals, sizes)
            out["func_kl"], out["func_l2"] = self._pair(st, teacher, c.func_kl_weight,
                                                        c.func_l2_weight)
        if c.funcp_kl_weight or c.funcp_l2_weight:  # the student's ROI head as the lens
            ts_fpn = {k: self.b_ts[k](teacher.fpn[k]) for k in self.b_ts}
            if self.has_path_stats:
                with self.path_stats.use(T2S):
                    ts = self.s_det.lens(ts_fpn, proposals, sizes)
            else:
                ts = self.s_det.lens(ts_fpn, proposals, sizes)
            out["funcp_kl"], out["funcp_l2"] = self._pair(ts, teacher, c.funcp_kl_weight,
                                                          c.funcp_l2_weight)
        if c.kd_weight or c.kd_l2_weight:  # the student's own ROI outputs
            out["kd"], out["kd_l2"] = self._pair((student.logits, student.box_deltas), teacher,
                                                 c.kd_weight, c.kd_l2_weight)
        return {k: v for k, v in out.items() if getattr(c, _WEIGHTS[k])}


_WEIGHTS = {"app": "app_weight", "func_kl": "func_kl_weight", "func_l2": "func_l2_weight",
            "funcp_kl": "funcp_kl_weight", "funcp_l2": "funcp_l2_weight",
            "kd": "kd_weight", "kd_l2": "kd_l2_weight"}

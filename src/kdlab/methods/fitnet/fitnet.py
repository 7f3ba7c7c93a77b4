"""FitNet: a hint loss between a bridged student feature and a teacher feature.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. As in the CRD benchmark
(Tian et al., ICLR 2020), the hint is trained jointly with the task loss (one stage, no
separate hint pre-training), with weight 100 on the mean-squared hint loss. The regressor
(``regressor``) is the benchmark's own (``convreg``, the default:
:class:`~kdlab.methods.fitnet.regressor.ConvRegressor`, conv with bias + BN + ReLU, a 1x1 conv
for equal sizes; RepDistiller ``models/util.py`` ``ConvReg``) or the same
:class:`~kdlab.methods.shared.bridge.Bridge` FCFD uses (``bridge``: 3x3 conv + BN, + LeakyReLU
for post-ReLU targets; kdlab's former default, used by FCFD's FitNet comparison; not compared
for accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import ANY_TASK, Batch, Distiller, Losses
from kdlab.methods.fitnet.regressor import ConvRegressor
from kdlab.methods.shared.bridge import Bridge
from kdlab.methods.shared.hint import hint_loss
from kdlab.models.staged.view import Features


@METHODS.register("fitnet")
class FitNet(Distiller):
    """FitNet (Romero et al., ICLR 2015): CE + weight * MSE(B(F_s^k), F_t^k)."""

    tasks = ANY_TASK  # stage outputs of the staged view, whatever the task (detection: a variant)
    @dataclass
    class Config:
        """``position`` is the 1-based stage whose output is the hint / guided layer
        (``features(x).stages[position - 1]``). The default 3 is the CRD benchmark's
        ``hint_layer=2``: RepDistiller's feature list starts with the stem's output
        (``feat[0]``), which is stage 1 of the zoo's views, so its ``feat[2]`` is the second
        residual stage's output (128x16x16 on resnet32x4), ``stages[2]``. ``position: 2``
        (the first residual stage) was kdlab's former default."""

        ce_weight: float = setting(1.0, range=">= 0")
        hint_weight: float = setting(100.0, range=">= 0")
        position: int = setting(3, range=">= 1")
        # convreg (the CRD benchmark's ConvReg) | bridge (FCFD's)
        regressor: str = setting("convreg", choices=("convreg", "bridge"))

    def setup(self) -> None:
        assert self.teacher is not None  # the Distiller base refuses a missing teacher
        k = self.cfg.position
        n = min(self.student.num_stages, self.teacher.num_stages)
        if k > n:
            raise UserError(
                f"method.position {k} is outside the stages; use 1..{n} (1-based stage numbers)."
            )
        src, dst = self.student.stage_info[k - 1], self.teacher.stage_info[k - 1]
        if self.cfg.regressor == "bridge":
            self.bridge = Bridge(src, dst, where=f"student -> teacher at stage {k}")
        else:  # convreg, the other choice of Config.regressor
            self.bridge = ConvRegressor(src, dst)

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        if not c.hint_weight:
            return {}
        guided = self.bridge(student.stages[c.position - 1])
        return {"hint": c.hint_weight * hint_loss(guided, teacher.stages[c.position - 1])}

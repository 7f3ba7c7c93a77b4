"""OFD: a comprehensive overhaul of feature distillation.

Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019. Distils the teacher's *pre-ReLU* stage features: the target is the teacher
feature through a margin ReLU, ``max(x, m)``, with ``m`` per channel the expected value of
the negative responses (from the affine parameters of the batch norm that produces them);
the student's pre-ReLU feature goes through a connector (1x1 conv + BN); the distance is
the partial L2 (:func:`kdlab.methods.ofd.losses.ofd_partial_l2`). Position ``i`` of ``n`` is
weighted ``1 / 2^(n - i - 1)``; the sum is divided by the batch size and by 1000 (the
paper's CIFAR setting; 10000 on ImageNet: ``method.weight: 1.0e-4``).

Which stages: the outputs after the stem, aligned from the deepest, as mdistiller
(``preact_feats[1:]``) and the authors pair them; ``include_stem: true`` also pairs the
stems (kdlab's former default). Teacher BatchNorm: mdistiller's OFD (like the authors' code)
puts the frozen teacher in train mode, so its BN uses batch statistics; ``teacher_bn:
batch`` does that (the CIFAR recipe uses it), ``eval`` (default) uses the running
statistics, the trained teacher's own function.

Finding pre-ReLU features in any network: the staged view returns stage outputs. For a
stage whose output is non-negative we hook the input of its last ``nn.ReLU`` module (the
hook keeps the last call, so a ReLU module reused within a block works) and check once, on
a dummy batch, that ReLU of the captured tensor equals the stage output. A stage whose
output already takes negative values (pre-activation ResNets, linear bottlenecks) is used
as it is. The margin comes from the last ``BatchNorm2d`` of the stage with the feature's
channel count. Networks that apply a functional ReLU (``F.relu``) at the end of a stage
cannot be tapped this way and get a clear error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.ofd.losses import bn_margin, ofd_partial_l2
from kdlab.methods.shared.spatial import match_spatial
from kdlab.methods.teacher_source import TEACHER_BN_MODES
from kdlab.models.staged.pairs import stage_pairs
from kdlab.models.staged.view import Features, Staged


class PreReLUTap:
    """Captures the pre-ReLU outputs of chosen stages of a staged network.

    ``with tap: out = net.features(x)`` then ``tap.features(out)`` gives one pre-ReLU map per
    chosen stage. Hooks record only inside the ``with`` block.
    """

    def __init__(self, net: Staged, stages: list[int], role: str) -> None:
        self.stages = stages
        self.role = role
        self.relus: dict[int, nn.ReLU] = {}
        self.bns: dict[int, nn.BatchNorm2d] = {}
        self._captured: dict[int, Tensor] = {}
        self._active = False
        for i in stages:
            info = net.stage_info[i]
            mods = [m for top in net.stage_modules(i) for m in top.modules()]
            bns = [m for m in mods if isinstance(m, nn.BatchNorm2d)
                   and m.num_features == info.channels and m.affine]
            if not bns:
                raise UserError(
                    f"OFD found no BatchNorm2d with {info.channels} channels in {role} stage "
                    f"{i}; OFD needs a BN before the stage's last ReLU, pick another network."
                )
            self.bns[i] = bns[-1]
            if info.post_relu:
                relus = [m for m in mods if isinstance(m, nn.ReLU)]
                if not relus:
                    raise UserError(self._no_relu(role, i))
                self.relus[i] = relus[-1]
                relus[-1].register_forward_pre_hook(self._hook(i))
        self._verify(net, role)

    @staticmethod
    def _no_relu(role: str, i: int) -> str:
        return (f"OFD cannot find the pre-ReLU feature of {role} stage {i} (its last ReLU is "
                "not an nn.ReLU module); use a model whose stages end in nn.ReLU modules.")

    def _hook(self, i: int):  # noqa: ANN202 - a forward pre-hook
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if self._active:
                self._captured[i] = inputs[0].clone()  # an in-place ReLU would overwrite it
        return hook

    def _verify(self, net: Staged, role: str) -> None:
        was_training = net.training
        net.eval()
        param = next(net.parameters())
        try:
            with torch.no_grad(), self:
                out = net.features(torch.randn(2, *net.input_shape, device=param.device,
                                               dtype=param.dtype))
                pre = self.features(out)
        finally:
            net.train(was_training)
        for i, p in zip(self.stages, pre, strict=True):
            if i in self.relus and not torch.allclose(F.relu(p), out.stages[i], atol=1e-5):
                raise UserError(self._no_relu(role, i))

    def __enter__(self) -> PreReLUTap:
        self._captured = {}
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False

    def features(self, out) -> list[Tensor]:  # noqa: ANN001 - a Features
        """The pre-ReLU map of each chosen stage from the pass just run."""
        result = []
        for i in self.stages:
            if i not in self.relus:
                result.append(out.stages[i])
            elif i in self._captured:
                result.append(self._captured.pop(i))
            else:  # the ReLU module found is not the one that ran
                raise UserError(self._no_relu(self.role, i))
        self._captured = {}
        return result

    def margins(self) -> list[Tensor]:
        return [bn_margin(self.bns[i].weight, self.bns[i].bias) for i in self.stages]


class Connector(nn.Sequential):
    """Student -> teacher channels: 1x1 conv + BN (He init, BN weight 1, bias 0)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


@METHODS.register("ofd")
class OFD(Distiller):
    """Overhaul of feature distillation (Heo et al., ICCV 2019) plus CE."""

    @dataclass
    class Config:
        weight: float = setting(1.0e-3, range=">= 0")  # CIFAR: 1/1000 (per image); ImageNet: 1e-4
        ce_weight: float = setting(1.0, range=">= 0")
        stages: list[int] | None = setting(None, range="any")  # None = every pair after the stem
        include_stem: bool = False  # also pair the stem outputs (kdlab's former default)
        # eval | batch (mdistiller's / the authors' train-mode teacher)
        teacher_bn: str = setting("eval", choices=TEACHER_BN_MODES)

    def setup(self) -> None:
        student, t = self.student, self.teacher
        assert t is not None
        self.pairs = stage_pairs(student, t, self.cfg.stages, include_stem=self.cfg.include_stem)
        self.student_tap = PreReLUTap(student, [i for i, _ in self.pairs], "student")
        self.teacher_tap = PreReLUTap(t, [j for _, j in self.pairs], "teacher")
        self.connectors = nn.ModuleList(
            Connector(student.stage_info[i].channels, t.stage_info[j].channels)
            for i, j in self.pairs
        )

    def student_pass(self, batch: Batch) -> Features:
        """The student's pass with its pre-ReLU maps of the paired stages in ``extras``."""
        with self.student_tap:
            s = super().student_pass(batch)
            pre = self.student_tap.features(s)
        return dataclasses.replace(s, extras={**s.extras, **pre_relu_extras(pre)})

    def teacher_pass(self, batch: Batch, student: Features) -> Features:
        """The teacher source's features with the teacher's pre-ReLU maps in ``extras``."""
        assert self.teacher_source is not None
        with self.teacher_tap:
            t = self.teacher_source.features(batch)
            pre = [f.clone() for f in self.teacher_tap.features(t)]
        return dataclasses.replace(t, extras={**t.extras, **pre_relu_extras(pre)})

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        # From the frozen teacher's BN, read each step (a teacher loaded later is seen too).
        margins = self.teacher_tap.margins()
        n = len(self.pairs)
        total = student.logits.new_zeros(())
        for k, (conn, margin) in enumerate(zip(self.connectors, margins, strict=True)):
            fs, ft = match_spatial(student.extras[pre_relu_key(k)],
                                   teacher.extras[pre_relu_key(k)])
            if fs.shape[0] != ft.shape[0]:
                raise UserError(
                    f"Student and teacher batches differ ({fs.shape[0]} vs {ft.shape[0]}); "
                    "feed both networks the same images.")
            total = total + ofd_partial_l2(conn(fs), ft, margin) / 2 ** (n - k - 1)
        return {"ofd": self.cfg.weight * total / batch.images.shape[0]}


def pre_relu_key(k: int) -> str:
    """The ``extras`` key of the pre-ReLU map of the ``k``-th stage pair."""
    return f"ofd_pre_relu{k}"


def pre_relu_extras(maps: list[Tensor]) -> dict[str, Tensor]:
    return {pre_relu_key(k): m for k, m in enumerate(maps)}

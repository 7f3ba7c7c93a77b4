"""OFD (Heo et al., ICCV 2019): pre-ReLU taps of the teacher and the student (in-place ReLU
modules and functional ReLUs), the teacher's BN margins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models.staged.view import Staged


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


def test_ofd_taps_pre_relu_features(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("ofd", {}, student, teacher)
    x, _, _ = _batch()
    with torch.no_grad(), d.teacher_tap:
        out = teacher.features(x)
        pre = d.teacher_tap.features(out)
    assert d.teacher_tap.stages == [1, 2, 3]  # after the stem
    for i, p in zip(d.teacher_tap.stages, pre, strict=True):
        stage = teacher.stage_modules(i)[0]  # conv, BN, ReLU
        want = stage[1](stage[0](out.stages[i - 1]))
        assert torch.allclose(p, want, atol=1e-6)
        assert (p < 0).any()  # really before the ReLU
    margins = d.teacher_tap.margins()
    assert [m.shape[0] for m in margins] == [32, 64, 64]
    assert all((m < 0).all() for m in margins)


def _staged_inplace_relu(functional: bool) -> Staged:
    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return F.relu(y) if functional else self.relu(y)

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("b0", Block(3, 8))
    net.add_module("b1", Block(8, 8))
    net.add_module("fc", nn.Linear(8, 10))
    return Staged(net, stem=[], stages=[["b0"], ["b1"]], classifier=["fc"],
                  input_shape=(3, 16, 16), num_classes=10)


def test_ofd_inplace_relu_module_and_functional_relu(tiny_pair):
    teacher, _ = tiny_pair
    student = _staged_inplace_relu(functional=False)
    d = build_distiller("ofd", {}, student, teacher)
    x, y, _ = _batch()
    with d.student_tap:
        out = student.features(x)
        pre = d.student_tap.features(out)
    assert (pre[-1] < 0).any() and torch.allclose(F.relu(pre[-1]), out.stages[-1])
    _, losses = d(x, y)
    assert torch.isfinite(losses["ofd"])
    with pytest.raises(UserError, match="pre-ReLU feature of student stage"):
        build_distiller("ofd", {}, _staged_inplace_relu(functional=True), teacher)

"""kdlab.models.stage: any network staged by module names or modules, checked against its own
forward; clear errors for an unknown name, a foreign module and a view that drops a module;
build_model takes an existing network or Staged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models import Staged, build_model, stage


class Net(nn.Module):
    """A user's network: a stem, two blocks, a final BN, pooling and a classifier."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.norm = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.act(self.conv(x))))
        return self.head(self.norm(x).mean((2, 3)))


def _view(net: Net, **changes) -> Staged:
    parts = dict(stem=["conv", "act"], stages=["block1", net.block2], pre_pool="norm",
                 head=net.head, input_shape=(3, 16, 16))
    return stage(net, **{**parts, **changes})


def test_names_and_modules_stage_a_network_that_matches_its_forward():
    net = Net()
    staged = _view(net).eval()
    assert staged.num_classes == 5 and staged.num_stages == 2
    assert staged.stem_names == ["conv", "act"] and staged.stage_names[1] == ["block2"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        f = staged.features(x)
        assert torch.allclose(f.logits, net(x)) and f.stages[1].shape == (3, 32, 4, 4)
        assert torch.allclose(staged.run_from(0, f.stages[0]).logits, net(x))
    assert [s.channels for s in staged.stage_info] == [16, 32]


def test_clear_errors():
    net = Net()
    with pytest.raises(UserError, match=r"stages\[0\] 'blok1' is not a module of the Net\. "
                                        "Did you mean 'block1'"):
        _view(net, stages=["blok1", "block2"])
    with pytest.raises(UserError, match=r"stages\[1\]\[0\] is a Conv2d that is not a module"):
        _view(net, stages=["block1", [nn.Conv2d(16, 32, 3)]])
    with pytest.raises(UserError, match=r"stages\[1\] must be a module name, a module"):
        _view(net, stages=["block1", 3])
    with pytest.raises(UserError, match="non-empty list"):
        _view(net, stages=[])
    with torch.no_grad():
        net.norm.weight.fill_(2.0)  # a fresh BN is the identity in eval mode: make it count
    with pytest.raises(UserError, match="does not reproduce net"):
        _view(net, pre_pool=())  # the final BN left out
    with pytest.raises(UserError, match="staged pass .* fails"):
        _view(net, stages=["block2", "block1"])  # out of order
    with pytest.raises(UserError, match="fails on a random input.*input_shape"):
        _view(net, input_shape=(1, 16, 16))
    with pytest.raises(UserError, match="num_classes is 3 but the Net returns 5"):
        _view(net, num_classes=3)


def test_build_model_takes_a_network_or_a_staged_view_and_methods_distil_it():
    student = _view(Net(10))
    assert build_model(student) is student
    tv = torchvision.models.resnet18(num_classes=10)
    teacher = build_model(tv, input_size=32)
    assert teacher.num_stages == 5 and teacher.num_classes == 10 and teacher.net is tv
    with pytest.raises(UserError, match="cannot tell the stages of a Net.*kdlab.models.stage"):
        build_model(Net())
    view = _view(Net(10), input_shape=(3, 32, 32))  # two stages: the hint at the last one
    d = build_distiller("fitnet", {"position": 2}, view, teacher)
    _, losses = d(torch.randn(4, 3, 32, 32), torch.arange(4))
    assert all(torch.isfinite(v) for v in losses.values())

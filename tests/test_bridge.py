"""Bridge modules (FCFD App. A.1): the three size cases, LeakyReLU for post-ReLU targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.models.staged import StageInfo
from kdlab.nn.bridge import Bridge


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "kind", "conv"),
    [
        ((8, 8), (8, 8), "same", nn.Conv2d),
        ((16, 16), (8, 8), "down", nn.Conv2d),
        ((7, 7), (4, 4), "down", nn.Conv2d),  # odd sizes: ceil(7 / 2) = 4
        ((4, 4), (8, 8), "up", nn.ConvTranspose2d),
    ],
)
def test_bridge_shapes(src_hw, dst_hw, kind, conv):
    src = StageInfo(5, *src_hw, post_relu=False)
    dst = StageInfo(12, *dst_hw, post_relu=False)
    b = Bridge(src, dst)
    assert b.kind == kind
    assert type(b[0]) is conv
    assert isinstance(b[1], nn.BatchNorm2d) and len(b) == 2
    k = 4 if kind == "up" else 3
    assert b[0].kernel_size == (k, k)
    assert b[0].stride == ((1, 1) if kind == "same" else (2, 2))
    y = b(torch.randn(2, 5, *src_hw))
    assert y.shape == (2, 12, *dst_hw)


def test_leaky_relu_only_for_post_relu_targets():
    src = StageInfo(4, 8, 8, post_relu=True)
    plain = Bridge(src, StageInfo(6, 8, 8, post_relu=False))
    relu = Bridge(src, StageInfo(6, 8, 8, post_relu=True))
    assert not any(isinstance(m, nn.LeakyReLU) for m in plain)
    assert isinstance(relu[-1], nn.LeakyReLU) and relu[-1].negative_slope == pytest.approx(0.1)
    y = relu(torch.randn(4, 4, 8, 8))
    assert (y < 0).any()  # leaky: negatives are scaled, not cut


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((32, 32), (8, 8)), ((8, 8), (6, 6)),
                                                 ((8, 8), (8, 4))])
def test_unbridgeable_sizes_say_what_to_do(src_hw, dst_hw):
    with pytest.raises(UserError, match="factor of 2"):
        Bridge(StageInfo(4, *src_hw, False), StageInfo(4, *dst_hw, False), where="stage 2")

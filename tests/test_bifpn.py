"""BiFPNc (FRSKD's self-teacher pyramid): shapes, widths, fusion weights, gradients."""

from __future__ import annotations

import pytest
import torch

from kdlab.nn.bifpn import BiFPNc, FastFusion, level_widths, resize_to


def _feats(channels, sizes, batch=2):
    return [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes, strict=True)]


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize(
    ("channels", "sizes"),
    [
        ([16, 32, 64], [16, 8, 4]),  # CIFAR ResNet-like: each level halves
        ([8, 16, 32, 32], [16, 8, 4, 4]),  # tiny_pair student: the last stage keeps the size
        ([64, 128, 256, 512], [14, 7, 4, 2]),  # odd sizes (ImageNet ResNet at 56x56 input)
    ],
)
def test_output_shapes_follow_width_times_channels(width, channels, sizes):
    net = BiFPNc(channels, num_classes=7, width=width, depth=2)
    refined, logits = net(_feats(channels, sizes))
    assert logits.shape == (2, 7)
    assert len(refined) == len(channels)
    for f, c, s in zip(refined, channels, sizes, strict=True):
        assert f.shape == (2, max(1, round(width * c)), s, s)
        assert (f >= 0).all()  # post-ReLU maps
    assert net.widths == level_widths(channels, width)


def test_widths_are_per_level_not_one_fixed_width():
    net = BiFPNc([8, 16, 32], num_classes=3, width=2)
    assert net.widths == [16, 32, 64]
    assert net.fc.in_features == 64


@pytest.mark.parametrize("repeat", [1, 2])
def test_repeat_and_depth(repeat):
    channels, sizes = [4, 8, 16], [8, 4, 2]
    net = BiFPNc(channels, num_classes=5, width=1.5, depth=3, repeat=repeat)
    refined, logits = net(_feats(channels, sizes))
    assert [f.shape[1] for f in refined] == [6, 12, 24]
    assert len(net.layers) == repeat
    # three depth-wise (groups == channels) convolutions per separable block
    block = net.layers[0].td_conv[0]
    depthwise = [m for m in block if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 3
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_fusion_weights_positive_and_normalised_after_updates():
    torch.manual_seed(0)
    channels, sizes = [4, 8, 16], [8, 4, 2]
    net = BiFPNc(channels, num_classes=3, width=2)
    # 2 top-down nodes (2 inputs each), 2 bottom-up nodes (3 and 2 inputs)
    assert sorted(f.weight.numel() for f in net.fusions()) == [2, 2, 2, 3]
    with torch.no_grad():  # a raw weight below zero must count as zero, never negative
        net.fusions()[0].weight[0] = -0.5
    before = [f.weight.detach().clone() for f in net.fusions()]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        refined, logits = net(_feats(channels, sizes, batch=4))
        loss = logits.pow(2).mean() - sum(f.mean() for f in refined)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(b, f.weight) for b, f in zip(before, net.fusions(), strict=True))
    for fusion in net.fusions():
        w = fusion.normalized_weights()
        assert (w >= 0).all()
        assert w.sum().item() == pytest.approx(1.0, abs=1e-3)
    assert net.fusions()[0].normalized_weights()[0] == 0


def test_fast_fusion_matches_formula():
    fusion = FastFusion(3, eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))
    xs = [torch.randn(1, 2, 3, 3) for _ in range(3)]
    expected = (2.0 * xs[0].relu() + 0.0 * xs[1].relu() + 1.0 * xs[2].relu()) / (3.0 + 1e-4)
    torch.testing.assert_close(fusion(xs), expected)
    w = fusion.normalized_weights()
    assert w[1] == 0 and w.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_every_parameter_gets_a_gradient():
    channels, sizes = [4, 8, 16, 16], [8, 4, 2, 2]
    net = BiFPNc(channels, num_classes=3, width=2)
    feats = _feats(channels, sizes, batch=3)
    refined, logits = net(feats)
    (logits.sum() + sum(f.sum() for f in refined)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_resize_to():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert resize_to(x, (4, 4)) is x
    assert resize_to(x, (8, 8)).shape[-2:] == (8, 8)
    down = resize_to(x, (2, 2))
    torch.testing.assert_close(down, torch.nn.functional.max_pool2d(x, 3, 2, 1))
    assert resize_to(torch.randn(1, 1, 14, 14), (4, 4)).shape[-2:] == (4, 4)


def test_rejects_single_level():
    with pytest.raises(ValueError):
        BiFPNc([8], num_classes=3)

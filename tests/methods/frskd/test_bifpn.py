"""BiFPNc (FRSKD's self-teacher pyramid): shapes, widths, fusion weights, gradients, and the
fast implementation against the formulas written out directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab.methods.frskd.bifpn as bifpn
from kdlab.methods.frskd.bifpn import BiFPNc, FastFusion, PointwiseConv, level_widths, resize_to


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
    xs = [torch.rand(1, 2, 3, 3) for _ in range(3)]  # activated maps: the layer's job
    before = [x.clone() for x in xs]
    expected = (2.0 * xs[0] + 0.0 * xs[1] + 1.0 * xs[2]) / (3.0 + 1e-4)
    torch.testing.assert_close(fusion(xs), expected)
    assert all(torch.equal(x, b) for x, b in zip(xs, before, strict=True))  # inputs untouched
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
    # TensorFlow "same" pooling of an even size: windows start at row/column 0 and the
    # padding is at the bottom/right, so the 3x3 windows are rows/cols {0,1,2} and {2,3}
    torch.testing.assert_close(resize_to(x, (2, 2)), torch.tensor([[[[10.0, 11.0],
                                                                     [14.0, 15.0]]]]))
    assert resize_to(torch.randn(1, 1, 14, 14), (4, 4)).shape[-2:] == (4, 4)


def _ref_max_pool_same(x):
    """The authors' down-sampling written out: pad to TensorFlow "same" (the extra row and
    column at the bottom/right) with zeros, then a 3x3 stride-2 max pool without padding."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dimension first
        extra = (math.ceil(size / 2) - 1) * 2 - size + 3
        pads += [extra // 2, extra - extra // 2]
    return F.max_pool2d(F.pad(x, pads), 3, 2)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 7), (6, 9), (28, 28), (1, 2)])
def test_max_pool_same_is_the_authors_padding(h, w):
    x = torch.rand(2, 3, h, w)  # activated maps: zero padding and -inf padding agree
    got = bifpn.max_pool_same(x)
    assert got.shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2))
    assert torch.equal(got, _ref_max_pool_same(x))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(bifpn.max_pool_same(cl), got)


def test_rejects_single_level():
    with pytest.raises(ValueError):
        BiFPNc([8], num_classes=3)


# ----------------------------------------------------------------------------------------------
# The implementation shares each ReLU among the nodes that read a map, sums fusions in place,
# runs ReLUs in place on BatchNorm outputs, pools without a padded copy and works in
# channels-last on CPU. The reference below is the authors' node written out directly
# (MingiJi/FRSKD, models/bifpnc.py): a ReLU on every input of every fusion node and of every
# lateral or resample projection, two lateral projections per level, zero-padded "same"
# max pooling before the bottom-up 1x1, layers returning pre-activation maps, a final ReLU,
# NCHW only. ``upsample_first`` runs the top-down resample in the authors' order too.


def _ref_fuse(fusion, inputs):
    w = F.relu(fusion.weight)
    w = w / (w.sum() + fusion.eps)
    return sum(w[j] * F.relu(x) for j, x in enumerate(inputs))


def _ref_pointwise(block, x):
    conv, bn, _ = block
    return F.relu(bn(conv(F.relu(x))))


def _ref_separable(block, x):
    for m in block:
        x = F.relu(x) if isinstance(m, nn.ReLU) else m(x)
    return x


def _ref_down(x, size):
    if x.shape[-2:] == size:
        return x
    if tuple(math.ceil(s / 2) for s in x.shape[-2:]) == tuple(size):
        return _ref_max_pool_same(x)
    return F.adaptive_max_pool2d(x, size)


def _ref_up(block, x, size, upsample_first):
    if upsample_first:  # the authors' order: nearest upsampling, then the 1x1 conv block
        return _ref_pointwise(block, F.interpolate(F.relu(x), size=size, mode="nearest"))
    return resize_to(_ref_pointwise(block, x), size)


def _ref_layer(layer, feats, upsample_first=False):
    n = len(feats)
    if layer.first:
        p = [_ref_pointwise(lat, f) for lat, f in zip(layer.lateral, feats, strict=True)]
    else:  # later layers: the previous layer's outputs (every reader rectifies them)
        p = list(feats)
    q = [None, *(_ref_pointwise(lat, f) for lat, f in zip(layer.bu_lateral, feats[1:],
                                                           strict=True))]
    td = [p[-1]]
    for i in range(n - 2, -1, -1):
        up = _ref_up(layer.td_proj[i], td[0], p[i].shape[-2:], upsample_first)
        td.insert(0, _ref_separable(layer.td_conv[i], _ref_fuse(layer.td_fuse[i], [p[i], up])))
    out = [td[0]]
    for i in range(1, n):
        down = _ref_pointwise(layer.bu_proj[i - 1], _ref_down(F.relu(out[-1]), p[i].shape[-2:]))
        inputs = [q[i], td[i], down] if i < n - 1 else [q[i], down]
        out.append(_ref_separable(layer.bu_conv[i - 1], _ref_fuse(layer.bu_fuse[i - 1], inputs)))
    return out


def _reference(net, feats, upsample_first=False):
    x = [f.contiguous() for f in feats]
    for layer in net.layers:
        x = _ref_layer(layer, x, upsample_first)
    refined = [F.relu(f) for f in x]
    return refined, net.fc(torch.flatten(F.adaptive_avg_pool2d(refined[-1], 1), 1))


PYRAMIDS = [
    # resnet8-like: two finest levels share a size (identity resize), width 2, depth 2
    dict(channels=[4, 4, 8, 16], sizes=[12, 12, 6, 3], width=2.0, depth=2, repeat=1),
    # width 1 (the first layer still projects every level), two stacked layers
    dict(channels=[4, 8, 16], sizes=[8, 4, 2], width=1.0, depth=3, repeat=2),
    # odd sizes: "same" pooling of an even (14 -> 7) size, adaptive pooling (7 -> 3),
    # non-integer nearest upsampling
    dict(channels=[4, 8, 8], sizes=[14, 7, 3], width=1.5, depth=1, repeat=1),
]


def _run(net, feats, forward, seed=1):
    """Outputs, input gradients and parameter gradients of a random linear read-out."""
    net.zero_grad(set_to_none=True)
    xs = [f.clone().requires_grad_() for f in feats]
    refined, logits = forward(net, xs)
    g = torch.Generator().manual_seed(seed)
    outs = [*refined, logits]
    (sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)).backward()
    return ([o.detach() for o in outs], [x.grad for x in xs],
            [q.grad for q in net.parameters()])


def _pyramid(cfg, dtype=torch.float32, batch=3):
    torch.manual_seed(0)
    net = BiFPNc(cfg["channels"], num_classes=5, width=cfg["width"], depth=cfg["depth"],
                 repeat=cfg["repeat"]).to(dtype)
    with torch.no_grad():  # uneven fusion weights, one below zero (counts as zero)
        for f in net.fusions():
            f.weight.uniform_(0.2, 2.0)
        net.fusions()[0].weight[0] = -0.5
    feats = [torch.randn(batch, c, s, s, dtype=dtype)  # raw: some entries negative
             for c, s in zip(cfg["channels"], cfg["sizes"], strict=True)]
    return net, feats


@pytest.mark.parametrize("cfg", PYRAMIDS)
def test_same_values_and_gradients_as_the_reference_bit_for_bit_in_nchw(cfg, monkeypatch):
    monkeypatch.setattr(bifpn, "preferred_layout", lambda device: torch.contiguous_format)
    net, feats = _pyramid(cfg)
    fast = _run(net, feats, lambda m, xs: m(xs))
    ref = _run(net, feats, _reference)
    for got, want in zip(fast, ref, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("cfg", PYRAMIDS[:2])  # factor-2 (or 1) resamples, as the authors'
def test_top_down_order_is_the_authors_in_training(cfg, monkeypatch):
    # 1x1 block then upsampling (ours) against upsampling then 1x1 block (the authors'):
    # the same function in training mode (BatchNorm statistics over copied pixels do not
    # change), so float64 values and every gradient agree to rounding
    monkeypatch.setattr(bifpn, "preferred_layout", lambda device: torch.contiguous_format)
    net, feats = _pyramid(cfg, torch.float64)
    ours = _run(net, feats, _reference)
    authors = _run(net, feats, lambda m, xs: _reference(m, xs, upsample_first=True))
    for got, want in zip(ours, authors, strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_two_lateral_projections_per_level_as_the_authors():
    net = BiFPNc([4, 8, 16], num_classes=3, width=1.0, repeat=2)
    first, second = net.layers
    # first layer: every level projected for the top-down path, even at width 1, and levels
    # 1..n-1 projected again, with their own weights, for the bottom-up nodes
    assert all(isinstance(m, PointwiseConv) for m in first.lateral)
    assert [m[0].in_channels for m in first.bu_lateral] == [8, 16]
    assert not {id(p) for p in first.lateral.parameters()} & {
        id(p) for p in first.bu_lateral.parameters()}
    # later layers: top-down reads the previous outputs as they are, bottom-up projects
    assert all(isinstance(m, nn.Identity) for m in second.lateral)
    assert len(second.bu_lateral) == 2
    assert all(f.eps == 1e-6 for f in net.fusions())


@pytest.mark.parametrize("cfg", PYRAMIDS)
def test_channels_last_has_the_reference_values_and_gradients(cfg):
    # float64: the layouts differ only in rounding, so they must agree to ~1e-12
    net, feats = _pyramid(cfg, torch.float64)
    fast = _run(net, feats, lambda m, xs: m(xs))
    ref = _run(net, feats, _reference)
    assert fast[0][0].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(fast, ref, strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # float32 (what training runs): BatchNorm's channels-last kernel sums in float32
    net, feats = _pyramid(cfg)
    with torch.no_grad():
        for a, b in zip(net(feats)[0], _reference(net, feats)[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_layout_by_device_and_inputs_left_alone():
    assert bifpn.preferred_layout(torch.device("cpu")) == torch.channels_last
    assert bifpn.preferred_layout(torch.device("cuda")) == torch.contiguous_format
    net, feats = _pyramid(PYRAMIDS[1])  # width 1: the lateral ReLU must not work in place
    # already channels-last (a channels-last student): the pyramid gets these very tensors
    feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    before = [f.clone() for f in feats]
    refined, logits = net(feats)
    (logits.sum() + sum(r.sum() for r in refined)).backward()
    assert all(torch.equal(f, b) for f, b in zip(feats, before, strict=True))
    assert all(r.is_contiguous(memory_format=torch.channels_last) for r in refined)

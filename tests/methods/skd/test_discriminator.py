"""SKD's critic: the authors' shape for 65x65 maps, small maps, self-attention, the penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.methods.skd.discriminator import Critic, SelfAttention, critic_depth
from kdlab.methods.skd.losses import gradient_penalty


def test_authors_shape_on_65x65_maps():
    critic = Critic(19, input_size=65)
    strided = [m for m in critic if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in strided] == [64, 128, 256, 512, 1]
    assert [m.stride for m in strided[:4]] == [(2, 2)] * 4
    assert all(hasattr(m, "parametrizations") for m in strided[:4])  # spectral norm
    assert not hasattr(strided[4], "parametrizations")
    attention = [m for m in critic if isinstance(m, SelfAttention)]
    assert [a.value.in_channels for a in attention] == [256, 512]
    assert isinstance(critic[0], nn.BatchNorm2d)
    assert critic(torch.randn(2, 19, 65, 65)).shape == (2, 1, 1, 1)


@pytest.mark.parametrize(("size", "layers"), [(4, 1), (8, 1), (16, 2), (33, 3), (65, 4),
                                              (129, 4), (None, 4)])
def test_depth_adapts_to_small_maps(size, layers):
    assert critic_depth(size, 4)[0] == layers
    if size is not None:
        critic = Critic(5, input_size=size, width=8)
        out = critic(torch.randn(2, 5, size, size))
        assert out.shape[:2] == (2, 1) and out.shape[-1] >= 1


def test_self_attention_starts_as_identity_and_attends():
    torch.manual_seed(0)
    layer = SelfAttention(16)
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(layer(x), x)
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    q = layer.query(x).flatten(2)
    k = layer.key(x).flatten(2)
    v = layer.value(x).flatten(2)
    ref = torch.empty_like(v)
    for n in range(2):
        for i in range(9):
            weights = torch.softmax(q[n, :, i] @ k[n], dim=0)  # over positions j
            ref[n, :, i] = (v[n] * weights).sum(dim=1)
    assert torch.allclose(layer(x), ref.view_as(x) + x, atol=1e-5)


def test_gradient_penalty_through_the_critic_against_autograd():
    torch.manual_seed(0)
    critic = Critic(3, input_size=8, width=8).eval()  # fixed spectral-norm vectors
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    alpha = torch.rand(4, 1, 1, 1)
    got = gradient_penalty(critic, real, fake, alpha)
    ref = 0.0
    for n in range(4):  # eval mode: samples are independent, one at a time
        x = (alpha[n] * real[n] + (1 - alpha[n]) * fake[n]).unsqueeze(0).requires_grad_()
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        ref += (g.pow(2).sum().sqrt().item() - 1) ** 2 / 4
    assert got.item() == pytest.approx(ref, rel=1e-4)
    got.backward()  # the penalty trains the critic's weights (biases do not move a gradient)
    weights = {n: p for n, p in critic.named_parameters() if n.endswith(("original", "4.weight"))}
    assert len(weights) == 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights.values())

"""Structured KD's losses (Liu et al., CVPR 2019): pair-wise similarity and the
Wasserstein critic's terms, against slow, direct computations from their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods.skd.losses import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    pair_pool,
    pairwise_similarity_loss,
    spatial_similarity,
)


def ref_pool(f: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max over windows of ``kernel`` positions with stride ``kernel``; the last window may
    be cut short by the border (ceil mode)."""
    b, c, h, w = f.shape
    rows, cols = math.ceil(h / kernel), math.ceil(w / kernel)
    out = torch.empty(b, c, rows, cols, dtype=f.dtype)
    for i in range(rows):
        for j in range(cols):
            out[:, :, i, j] = f[:, :, i * kernel:(i + 1) * kernel,
                                j * kernel:(j + 1) * kernel].amax(dim=(2, 3))
    return out


def ref_pair(fs: torch.Tensor, ft: torch.Tensor) -> float:
    """1/N^2 sum_ij (a_ij^s - a_ij^t)^2 averaged over the batch, a_ij the cosine similarity
    of positions i and j (no pooling: the caller pools)."""
    b = fs.shape[0]
    total = 0.0
    for n in range(b):
        vs = fs[n].flatten(1).t().tolist()
        vt = ft[n].flatten(1).t().tolist()
        size = len(vs)

        def cos(u, v):
            dot = sum(x * y for x, y in zip(u, v, strict=True))
            return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

        for i in range(size):
            for j in range(size):
                total += (cos(vs[i], vs[j]) - cos(vt[i], vt[j])) ** 2 / size**2
    return total / b


@pytest.mark.parametrize(("size", "grid"), [(8, 2), (9, 3), (65, 3), (16, 2)])
def test_pair_pool_is_the_authors_max_pool(size, grid):
    f = torch.randn(2, 3, size, size)
    pooled = pair_pool(f, 0.5)
    assert pooled.shape[-2:] == (grid, grid)
    assert torch.equal(pooled, ref_pool(f, int(size * 0.5)))


def test_spatial_similarity_is_cosine_between_positions():
    f = torch.randn(2, 6, 3, 3)
    a = spatial_similarity(f)
    v = f.flatten(2)
    for i in range(9):
        for j in range(9):
            ref = F.cosine_similarity(v[:, :, i], v[:, :, j], dim=1)
            assert torch.allclose(a[:, i, j], ref, atol=1e-5)


def test_pairwise_loss_matches_the_formula_on_pooled_maps():
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 8, 8, generator=g)
    got = pairwise_similarity_loss(fs, ft, pool_scale=0.5)
    assert got.item() == pytest.approx(ref_pair(ref_pool(fs, 4), ref_pool(ft, 4)), rel=1e-5)
    fine = pairwise_similarity_loss(fs, ft, pool_scale=1 / 8)  # window 1: no pooling
    assert fine.item() == pytest.approx(ref_pair(fs, ft), rel=1e-5)


def test_pairwise_loss_detached_norm_changes_only_the_gradient():
    fs, ft = torch.randn(1, 4, 4, 4, requires_grad=True), torch.randn(1, 4, 4, 4)
    a = pairwise_similarity_loss(fs, ft, pool_scale=0.25, detach_norm=True)
    (ga,) = torch.autograd.grad(a, fs)
    b = pairwise_similarity_loss(fs, ft, pool_scale=0.25, detach_norm=False)
    (gb,) = torch.autograd.grad(b, fs)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert not torch.allclose(ga, gb)


def test_wasserstein_terms():
    d_s, d_t = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.5], [-0.5]])
    assert critic_loss(d_s, d_t).item() == pytest.approx(2.0 - 0.0)
    assert generator_loss(d_s).item() == pytest.approx(-2.0)


def test_gradient_penalty_matches_autograd_on_a_direct_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    critic = lambda x: (x.pow(3) * w).sum(dim=(1, 2, 3)) + x.sum(dim=(1, 2, 3))  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    alpha = torch.rand(5, 1, 1, 1)
    got = gradient_penalty(critic, real, fake, alpha)
    # d/dx of sum(w x^3 + x) = 3 w x^2 + 1, per sample at the interpolate
    x = alpha * real + (1 - alpha) * fake
    grad = 3 * w * x.pow(2) + 1
    ref = sum((math.sqrt(grad[n].pow(2).sum().item()) - 1) ** 2 for n in range(5)) / 5
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic_weights():
    weight = torch.randn(3, 4, 4, requires_grad=True)
    critic = lambda x: (x.pow(2) * weight).sum(dim=(1, 2, 3))  # noqa: E731
    real = torch.randn(2, 3, 4, 4, requires_grad=True)
    fake = torch.randn(2, 3, 4, 4, requires_grad=True)
    gp = gradient_penalty(critic, real, fake)
    gp.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert real.grad is None and fake.grad is None  # the maps are detached

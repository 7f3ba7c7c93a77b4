"""Segmentation distillation losses against slow, direct computations from their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import UserError
from kdlab.methods.cwd.losses import cwd_loss
from kdlab.methods.shared.dense import match_size, pixel_kl_loss
from kdlab.methods.skd.losses import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    pair_pool,
    pairwise_similarity_loss,
    spatial_similarity,
)


def _softmax(values: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def ref_pixel_kl(zs: torch.Tensor, zt: torch.Tensor, tau: float) -> float:
    """tau^2 / (B h w) sum over pixels of KL(softmax(z_t / tau) || softmax(z_s / tau))."""
    b, _, h, w = zs.shape
    total = 0.0
    for n in range(b):
        for i in range(h):
            for j in range(w):
                total += _kl(_softmax(zt[n, :, i, j].tolist(), tau),
                             _softmax(zs[n, :, i, j].tolist(), tau))
    return tau * tau * total / (b * h * w)


def ref_cwd(ys: torch.Tensor, yt: torch.Tensor, tau: float) -> float:
    """tau^2 / (B C) sum over samples and channels of KL over the positions of a channel."""
    b, c = ys.shape[:2]
    total = 0.0
    for n in range(b):
        for k in range(c):
            total += _kl(_softmax(yt[n, k].flatten().tolist(), tau),
                         _softmax(ys[n, k].flatten().tolist(), tau))
    return tau * tau * total / (b * c)


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


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pixel_kl_matches_the_per_pixel_formula(tau):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g) * 2
    got = pixel_kl_loss(zs, zt, tau)
    assert got.item() == pytest.approx(ref_pixel_kl(zs, zt, tau), rel=1e-5)
    assert pixel_kl_loss(zt, zt, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_pixel_kl_brings_maps_to_one_size_first():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    up = F.interpolate(zs, size=(6, 6), mode="bilinear", align_corners=False)
    assert pixel_kl_loss(zs, zt, 2.0).item() == pytest.approx(ref_pixel_kl(up, zt, 2.0),
                                                              rel=1e-5)
    s, t = match_size(zt, zs)  # the teacher smaller: it is the one upsampled
    assert s.shape == t.shape == (2, 4, 6, 6) and torch.equal(s, zt)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_the_per_channel_formula(tau):
    g = torch.Generator().manual_seed(2)
    ys, yt = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g) * 3
    assert cwd_loss(ys, yt, tau).item() == pytest.approx(ref_cwd(ys, yt, tau), rel=1e-5)


def test_pixel_kl_refuses_different_classes_and_flat_logits():
    with pytest.raises(UserError, match="same classes"):
        pixel_kl_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4))
    with pytest.raises(UserError, match="height, width"):
        pixel_kl_loss(torch.randn(2, 3), torch.randn(2, 3))


def test_cwd_refuses_different_channels():
    with pytest.raises(UserError, match="project"):
        cwd_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4))


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


def test_dense_losses_keep_float64_and_widen_half_precision():
    """The step-exact parity checks run in float64: the pixel CE and the detection KD losses
    widen half-precision inputs to float32 (autocast) but never narrow float64."""
    from kdlab.methods.shared.detection import fpn_app_loss, roi_kl_loss, roi_l2_loss
    from kdlab.tasks.segmentation.task import pixel_ce

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    assert pixel_ce(s, torch.randint(0, 5, (2, 8, 8), generator=g), 255).dtype == torch.float64
    assert fpn_app_loss({"0": s}, {"0": s + 1}).dtype == torch.float64
    logits = s[:, :, 0, 0]
    assert roi_kl_loss(logits, logits.flip(0)).dtype == torch.float64
    deltas = torch.randn(3, 12, generator=g, dtype=torch.float64)
    assert roi_l2_loss(deltas, deltas + 1).dtype == torch.float64
    half = deltas.bfloat16()
    assert roi_l2_loss(half, half + 1).dtype == torch.float32
    assert pixel_ce(s.half(), torch.zeros(2, 8, 8, dtype=torch.long), 255).dtype == torch.float32

"""KD and DKD losses against direct computations from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.shared.logits import dkd_loss, kd_loss, nckd_loss, tckd_loss


def _softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_loss_matches_formula(tau):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 3
    expected = sum(
        _kl(_softmax(t, tau), _softmax(s, tau)) for s, t in zip(zs.tolist(), zt.tolist())
    ) / 5 * tau**2
    assert kd_loss(zs, zt, tau).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_zero_for_identical_logits():
    z = torch.randn(4, 10)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def _dkd_parts(s: list[float], t: list[float], y: int, tau: float) -> tuple[float, float]:
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    rest_s = [v for i, v in enumerate(s) if i != y]
    rest_t = [v for i, v in enumerate(t) if i != y]
    nckd = _kl(_softmax(rest_t, tau), _softmax(rest_s, tau))
    return tckd * tau**2, nckd * tau**2


def test_dkd_matches_decoupled_formula():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(6, 5, generator=g) * 2, torch.randn(6, 5, generator=g) * 2
    y = torch.randint(0, 5, (6,), generator=g)
    parts = [_dkd_parts(s, t, int(c), 4.0) for s, t, c in zip(zs.tolist(), zt.tolist(), y)]
    tckd = sum(p[0] for p in parts) / 6
    nckd = sum(p[1] for p in parts) / 6
    assert tckd_loss(zs, zt, y, 4.0).item() == pytest.approx(tckd, rel=1e-4)
    assert nckd_loss(zs, zt, y, 4.0).item() == pytest.approx(nckd, rel=1e-4)
    got = dkd_loss(zs, zt, y, alpha=1.0, beta=2.0, temperature=4.0).item()
    assert got == pytest.approx(tckd + 2 * nckd, rel=1e-4)


def test_dkd_finite_with_confident_teacher_and_gradient_flows():
    zs = torch.randn(3, 4, requires_grad=True)
    zt = torch.tensor([[50.0, -50, 0, 0]] * 3)
    loss = dkd_loss(zs, zt, torch.tensor([0, 0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


def test_kd_loss_on_score_maps_is_the_pixel_mean_of_per_pixel_kl():
    """Pixel-wise distillation (Liu et al., CVPR 2019, Eq. 1): KL per pixel, averaged."""
    from support.references import ref_kl

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    pixels_s = [s[b, :, i, j] for b in range(2) for i in range(3) for j in range(4)]
    pixels_t = [t[b, :, i, j] for b in range(2) for i in range(3) for j in range(4)]
    want = ref_kl(torch.stack(pixels_s), torch.stack(pixels_t), 2.0)
    assert kd_loss(s, t, 2.0).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        kd_loss(s, t[:, :, :2], 2.0)

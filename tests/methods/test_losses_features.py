"""Feature-distillation losses against slow, direct computations from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods.shared.attention import at_loss, attention_map


# --------------------------------------------------------------------- attention transfer
def _attention_slow(f: torch.Tensor, p: float) -> torch.Tensor:
    b, c, h, w = f.shape
    out = torch.zeros(b, h * w, dtype=f.dtype)
    for n in range(b):
        q = torch.zeros(h * w, dtype=f.dtype)
        for y in range(h):
            for x in range(w):
                s = 0.0
                for k in range(c):
                    s += abs(float(f[n, k, y, x])) ** p
                q[y * w + x] = s / c
        norm = math.sqrt(sum(float(v) ** 2 for v in q))
        out[n] = q / norm
    return out


@pytest.mark.parametrize("p", [1, 2, 4])
def test_attention_map_matches_formula(p):
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.allclose(attention_map(f, p), _attention_slow(f, p), atol=1e-10)


def test_attention_map_is_unit_norm_and_channel_count_free():
    torch.manual_seed(0)
    a = attention_map(torch.randn(3, 7, 6, 6))
    assert a.shape == (3, 36)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-6)
    # scaling a feature does not change its map
    f = torch.randn(2, 4, 5, 5)
    assert torch.allclose(attention_map(f), attention_map(3.0 * f), atol=1e-6)


def test_at_loss_matches_formula():
    torch.manual_seed(1)
    s = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    t = torch.randn(3, 9, 5, 5, dtype=torch.float64)
    qs, qt = _attention_slow(s, 2), _attention_slow(t, 2)
    total = 0.0
    for n in range(3):
        for j in range(25):
            total += (float(qs[n, j]) - float(qt[n, j])) ** 2
    assert at_loss(s, t).item() == pytest.approx(total / (3 * 25), rel=1e-9)
    assert at_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_at_loss_bad_shapes():
    with pytest.raises(UserError, match="batches differ"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(UserError, match="spatial"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8))


# --------------------------------------------------------------------- VID
def test_vid_loss_matches_gaussian_nll():
    from kdlab.methods.vid.losses import vid_loss

    torch.manual_seed(2)
    mu = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    t = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    var = torch.rand(3, dtype=torch.float64) + 0.5
    total, count = 0.0, 0
    for n in range(2):
        for c in range(3):
            sigma = math.sqrt(float(var[c]))
            for y in range(2):
                for x in range(3):
                    d = float(t[n, c, y, x] - mu[n, c, y, x])
                    total += math.log(sigma) + d * d / (2 * sigma**2)
                    count += 1
    assert vid_loss(mu, var, t).item() == pytest.approx(total / count, rel=1e-9)
    with pytest.raises(UserError, match="shape"):
        vid_loss(mu, var, t[:1])


# --------------------------------------------------------------------- CRD
def test_crd_nce_loss_matches_formula():
    from kdlab.methods.crd.losses import crd_nce_loss

    torch.manual_seed(3)
    b, k, n_data = 3, 5, 40
    x = torch.rand(b, k + 1, dtype=torch.float64) * 0.1
    pn = 1.0 / n_data
    total = 0.0
    for i in range(b):
        p = float(x[i, 0])
        total += math.log(p / (p + k * pn + 1e-7))
        for j in range(1, k + 1):
            q = float(x[i, j])
            total += math.log(k * pn / (q + k * pn + 1e-7))
    assert crd_nce_loss(x, n_data).item() == pytest.approx(-total / b, rel=1e-9)


# --------------------------------------------------------------------- OFD
def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_bn_margin_is_mean_of_negative_part():
    from kdlab.methods.ofd.losses import bn_margin

    gamma = torch.tensor([1.0, -2.0, 0.5, 0.01])
    beta = torch.tensor([0.0, 1.0, -0.3, 5.0])
    got = bn_margin(gamma, beta)
    for c in range(4):
        s, m = abs(float(gamma[c])), float(beta[c])
        if _normal_cdf(-m / s) > 1e-3:
            # E[x | x < 0] by numeric integration of x * pdf(x) over x < 0
            steps, lo = 200000, m - 12 * s
            h = (0.0 - lo) / steps
            num = den = 0.0
            for i in range(steps):
                xv = lo + (i + 0.5) * h
                pdf = math.exp(-0.5 * ((xv - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                num += xv * pdf * h
                den += pdf * h
            want = num / den
        else:
            want = -3 * s
        assert float(got[c]) == pytest.approx(want, rel=1e-3, abs=1e-4)


def test_ofd_partial_l2_matches_definition():
    from kdlab.methods.ofd.losses import ofd_partial_l2

    torch.manual_seed(4)
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    t = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    m = torch.tensor([-0.5, -0.1, -1.0], dtype=torch.float64)
    total = 0.0
    for n in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(2):
                    tv = max(float(t[n, c, y, x]), float(m[c]))
                    sv = float(s[n, c, y, x])
                    if sv <= tv and tv <= 0:
                        continue
                    total += (sv - tv) ** 2
    assert ofd_partial_l2(s, t, m).item() == pytest.approx(total, rel=1e-9)
    with pytest.raises(UserError, match="shape"):
        ofd_partial_l2(s, t[:1], m)


# --------------------------------------------------------------------- ReviewKD HCL
def _avg_pool_slow(f: torch.Tensor, level: int) -> torch.Tensor:
    b, c, h, w = f.shape  # h, w divisible by level in these tests
    out = torch.zeros(b, c, level, level, dtype=f.dtype)
    sh, sw = h // level, w // level
    for n in range(b):
        for k in range(c):
            for i in range(level):
                for j in range(level):
                    out[n, k, i, j] = f[n, k, i * sh:(i + 1) * sh, j * sw:(j + 1) * sw].mean()
    return out


def _mse_slow(a: torch.Tensor, b: torch.Tensor) -> float:
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)


def test_hcl_loss_matches_definition():
    from kdlab.methods.reviewkd.losses import hcl_loss

    torch.manual_seed(5)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 1, 1)]
    fs = [torch.randn(*s, dtype=torch.float64) for s in shapes]
    ft = [torch.randn(*s, dtype=torch.float64) for s in shapes]
    want = 0.0
    for a, b in zip(fs, ft, strict=True):
        h = a.shape[2]
        terms = [(1.0, _mse_slow(a, b))]
        weight = 1.0
        for level in (4, 2, 1):
            if level < h:
                weight /= 2
                pooled = _mse_slow(_avg_pool_slow(a, level), _avg_pool_slow(b, level))
                terms.append((weight, pooled))
        want += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    assert hcl_loss(fs, ft).item() == pytest.approx(want, rel=1e-9)
    with pytest.raises(UserError):
        hcl_loss(fs, ft[:2])
    with pytest.raises(UserError, match="shapes differ"):
        hcl_loss([fs[0]], [ft[0][:1]])

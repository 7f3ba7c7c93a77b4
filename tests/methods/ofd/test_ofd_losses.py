"""OFD's losses (the margin, the partial L2) against slow, direct computations from the
paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError


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

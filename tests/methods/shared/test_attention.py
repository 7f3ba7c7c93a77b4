"""Attention-transfer maps and loss (Zagoruyko & Komodakis, ICLR 2017) against slow,
direct computations from the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods.shared.attention import at_loss, attention_map


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

"""ReviewKD's hierarchical context loss against a slow, direct computation."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError


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

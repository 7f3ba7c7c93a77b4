"""CRD's NCE loss against a slow, direct computation from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch


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

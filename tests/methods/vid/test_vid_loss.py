"""VID's loss against a slow, direct Gaussian negative log-likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError


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

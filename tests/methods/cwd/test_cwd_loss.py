"""CWD's loss (Shu et al., ICCV 2021) against a slow, direct computation from its formula."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods.cwd.losses import cwd_loss
from support.references import ref_kl_of, ref_softmax


def ref_cwd(ys: torch.Tensor, yt: torch.Tensor, tau: float) -> float:
    """tau^2 / (B C) sum over samples and channels of KL over the positions of a channel."""
    b, c = ys.shape[:2]
    total = 0.0
    for n in range(b):
        for k in range(c):
            total += ref_kl_of(ref_softmax(yt[n, k].flatten().tolist(), tau),
                               ref_softmax(ys[n, k].flatten().tolist(), tau))
    return tau * tau * total / (b * c)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_the_per_channel_formula(tau):
    g = torch.Generator().manual_seed(2)
    ys, yt = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g) * 3
    assert cwd_loss(ys, yt, tau).item() == pytest.approx(ref_cwd(ys, yt, tau), rel=1e-5)


def test_cwd_refuses_different_channels():
    with pytest.raises(UserError, match="project"):
        cwd_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4))

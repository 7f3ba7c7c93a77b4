"""SAGAN's spectral normalisation (the SKD authors' and CIRKD's critic) against its algorithm
written out: one power iteration per forward, ``v`` before ``u``, none at construction, in
eval mode too; and the critic's choice between it and torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.methods.skd.discriminator import Critic
from kdlab.methods.skd.spectral import SaganSpectralNorm, l2_normalise, sagan_spectral_norm


def _sagan(w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAGAN's ``_update_u_v``: v = N(W^T u), u = N(W v), sigma = u . W v."""
    m = w.reshape(w.shape[0], -1)
    v = m.t().mv(u)
    v = v / (v.norm() + 1e-12)
    u = m.mv(v)
    u = u / (u.norm() + 1e-12)
    return w / u.dot(m.mv(v)), u, v


def test_construction_runs_no_power_iteration():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 4, 2, 1)
    w = conv.weight.detach().clone()
    sagan_spectral_norm(conv)
    norm = conv.parametrizations.weight[0]
    assert isinstance(norm, SaganSpectralNorm)
    torch.testing.assert_close(conv.parametrizations.weight.original, w)
    assert norm.u.norm().item() == pytest.approx(1.0) and norm.v.shape == (5 * 16,)


@pytest.mark.parametrize("train", [True, False])
def test_each_forward_is_one_sagan_iteration(train):
    torch.manual_seed(1)
    conv = sagan_spectral_norm(nn.Conv2d(3, 4, 4, 2, 1)).train(train)
    norm = conv.parametrizations.weight[0]
    w = conv.parametrizations.weight.original.detach()
    u = norm.u.clone()
    for _ in range(3):  # every access (each forward) iterates once more, eval mode too
        expected, u, v = _sagan(w, u)
        torch.testing.assert_close(conv.weight, expected)
        torch.testing.assert_close(norm.u, u)
        torch.testing.assert_close(norm.v, v)


def test_torchs_order_differs_after_one_step():
    torch.manual_seed(2)
    w = torch.randn(6, 10)
    u0 = l2_normalise(torch.randn(6))
    ours, *_ = _sagan(w, u0)
    v_t = l2_normalise(w.t().mv(u0))  # torch: u <- N(W v), then v <- N(W^T u), from v0
    u_t = l2_normalise(w.mv(v_t))
    assert not torch.allclose(ours, w / u_t.dot(w.mv(l2_normalise(w.t().mv(u_t)))))


def test_the_critic_uses_the_spectral_norm_asked_for():
    sagan = Critic(19, input_size=64, spectral="sagan")
    assert any(isinstance(m, SaganSpectralNorm) for m in sagan.modules())
    torch_sn = Critic(19, input_size=64)  # torch's by default
    assert not any(isinstance(m, SaganSpectralNorm) for m in torch_sn.modules())
    with pytest.raises(KeyError):
        Critic(19, spectral="none")


def test_skd_refuses_an_unknown_spectral_norm():
    from kdlab.methods import method_config
    from kdlab.methods.skd.skd import SKD

    with pytest.raises(UserError, match="spectral_norm"):
        method_config(SKD, {"spectral_norm": "none"}, name="skd", task="segmentation")

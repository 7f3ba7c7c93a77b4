"""Spectral normalisation as SAGAN's code computes it (the critic of the SKD authors and CIRKD).

Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018, Alg. 1:
the weight ``W`` (its first dimension as rows) is divided by an estimate of its largest
singular value, ``sigma = u^T W v``, with ``u, v`` refined by one power iteration per forward
pass. SAGAN's implementation (Zhang et al., ICML 2019; the ``SpectralNorm`` module the SKD
authors' ``networks/spectral.py`` and CIRKD's ``utils/sagan.py`` both use) differs from
``torch.nn.utils.parametrizations.spectral_norm`` in ways that change the numbers:

- no power iterations at construction (torch runs 15); ``u, v`` start as normalised Gaussian
  draws;
- each forward, train or eval, updates ``v <- N(W^T u)`` then ``u <- N(W v)`` (torch: ``u``
  first, and only in training), with ``N(x) = x / (||x|| + 1e-12)``;
- ``u`` and ``v`` are replaced, not updated in place, and the gradient of ``sigma`` reads
  them when the backward runs: a backward after several forward passes (the critic is called
  two or three times per training step) uses the estimates of the last pass.

:class:`SaganSpectralNorm` is that computation as a parametrization of a weight (registered
with ``unsafe=True`` so that registering runs no iteration); ``u`` and ``v`` are buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

EPS = 1e-12


def l2_normalise(x: Tensor) -> Tensor:
    """``x / (||x|| + 1e-12)`` (SAGAN's ``l2normalize``)."""
    return x / (x.norm() + EPS)


class SaganSpectralNorm(nn.Module):
    """``W / (u^T W v)`` after one power iteration on ``u, v`` (SAGAN's order: ``v`` then
    ``u``)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        rows, cols = weight.shape[0], weight[0].numel()
        self.register_buffer("u", l2_normalise(weight.new_empty(rows).normal_(0, 1)))
        self.register_buffer("v", l2_normalise(weight.new_empty(cols).normal_(0, 1)))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.reshape(weight.shape[0], -1)
        fixed = matrix.detach()
        # ``.data =`` (not ``copy_``): the graph of an earlier pass keeps reading these
        # tensors, so its backward sees the latest estimates, as SAGAN's code does
        self.v.data = l2_normalise(fixed.t().mv(self.u))
        self.u.data = l2_normalise(fixed.mv(self.v))
        sigma = self.u.dot(matrix.mv(self.v))
        return weight / sigma


def sagan_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Register :class:`SaganSpectralNorm` on ``module.<name>``; returns ``module``."""
    with torch.no_grad():
        norm = SaganSpectralNorm(getattr(module, name))
    parametrize.register_parametrization(module, name, norm, unsafe=True)
    return module

"""Embedding-free similarity of two sets of features of the same images.

- :func:`mean_cosine`: the mean over images of the cosine similarity between an image's teacher
  feature and its student feature: whether each student point lands on its own teacher point.
- :func:`linear_cka`: linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton,
  "Similarity of Neural Network Representations Revisited", ICML 2019, Eqs. 3-4): with
  ``K = X X^T``, ``L = Y Y^T`` and ``H = I - 1 1^T / n``,
  ``CKA = <HKH, HLH> / (||HKH||_F ||HLH||_F)``, which for linear kernels equals
  ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` on column-centred features. It is
  invariant to orthogonal transforms and isotropic scaling of either side, in [0, 1].
  ``debiased=True`` replaces HSIC by its unbiased U-statistic estimator (Song et al., JMLR
  2012; as in the paper's follow-ups): with few images and wide features the biased CKA is
  inflated.

The Gram form costs ``O(n^2 d)``: features of thousands of dimensions (a flattened stage
output) are fine for the few hundred images of a class. Computed in float64.
"""

from __future__ import annotations

from torch import Tensor

from kdlab.errors import UserError


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = x.flatten(1).double(), y.flatten(1).double()
    if x.shape[0] != y.shape[0]:
        raise UserError(f"The two feature sets hold {x.shape[0]} and {y.shape[0]} images; "
                        "compare features of the same images.")
    return x, y


def mean_cosine(x: Tensor, y: Tensor, eps: float = 1e-12) -> float:
    """``(1/n) sum_i <x_i, y_i> / (||x_i|| ||y_i||)`` over paired rows (images); a zero row
    contributes 0."""
    x, y = _pair(x, y)
    num = (x * y).sum(dim=1)
    den = (x.norm(dim=1) * y.norm(dim=1)).clamp(min=eps)
    return float((num / den).mean())


def center_gram(gram: Tensor, unbiased: bool = False) -> Tensor:
    """``H K H`` (double centring); with ``unbiased`` the U-statistic centring of the
    unbiased HSIC estimator (zero diagonal)."""
    k = gram.double().clone()
    n = k.shape[0]
    if not unbiased:
        means = k.mean(dim=0)
        means = means - means.mean() / 2
        return k - means[:, None] - means[None, :]
    if n < 4:
        raise UserError(f"The debiased CKA needs at least 4 images, got {n}.")
    k.fill_diagonal_(0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0)
    return k


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA between features ``x`` ``(n, d1)`` and ``y`` ``(n, d2)`` of the same ``n``
    images (rows), through their Gram matrices."""
    x, y = _pair(x, y)
    kx = center_gram(x @ x.T, debiased)
    ky = center_gram(y @ y.T, debiased)
    den = kx.norm() * ky.norm()
    if den == 0:
        return 0.0
    return float((kx * ky).sum() / den)


__all__ = ["center_gram", "linear_cka", "mean_cosine"]

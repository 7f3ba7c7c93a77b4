"""Relation losses against slow, direct computations from the papers' formulas (loops over
pairs and triplets), invariances the papers claim, batch edge cases and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods.shared import relations as R


@pytest.fixture(autouse=True)
def _float64():
    """Compare with the references in double precision (restored after each test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _norm(v):
    return math.sqrt(sum(float(a) ** 2 for a in v))


# ----------------------------------------------------------------------- references
def ref_rkd_distance(s, t):
    s, t = s.flatten(1), t.flatten(1)
    b = len(s)

    def potentials(x):
        d = [[_norm(x[i] - x[j]) for j in range(b)] for i in range(b)]
        nonzero = [d[i][j] for i in range(b) for j in range(b) if d[i][j] > 0]
        mu = sum(nonzero) / len(nonzero)
        return [[d[i][j] / mu for j in range(b)] for i in range(b)]

    ps, pt = potentials(s), potentials(t)
    return sum(_huber(ps[i][j] - pt[i][j]) for i in range(b) for j in range(b)) / b**2


def ref_rkd_angle(s, t):
    s, t = s.flatten(1), t.flatten(1)
    b = len(s)

    def cos(x, i, j, k):
        eij, ekj = x[i] - x[j], x[k] - x[j]
        ni, nk = _norm(eij), _norm(ekj)
        if ni == 0 or nk == 0:
            return 0.0
        return float((eij * ekj).sum()) / (ni * nk)

    total = 0.0
    for i in range(b):
        for j in range(b):
            for k in range(b):
                total += _huber(cos(s, i, j, k) - cos(t, i, j, k))
    return total / b**3


def _gram_rows_normalised(x):
    q = x.flatten(1)
    b = len(q)
    g = [[float((q[i] * q[j]).sum()) for j in range(b)] for i in range(b)]
    return [[g[i][j] / math.sqrt(sum(v * v for v in g[i])) for j in range(b)]
            for i in range(b)]


def ref_sp(s, t):
    b = len(s)
    gs, gt = _gram_rows_normalised(s), _gram_rows_normalised(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def ref_cc(s, t, kernel, gamma=0.4, order=2):
    b = len(s)

    def corr(x):
        x = x.flatten(1)
        if kernel == "gaussian":
            x = x / x.norm(dim=1, keepdim=True)
        out = [[0.0] * b for _ in range(b)]
        for i in range(b):
            for j in range(b):
                dot = float((x[i] * x[j]).sum())
                if kernel == "bilinear":
                    out[i][j] = dot
                else:
                    out[i][j] = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
                                    * dot**p for p in range(order + 1))
        return out

    cs, ct = corr(s), corr(t)
    return sum((ct[i][j] - cs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def ref_irg_edge(s, t):
    b = len(s)

    def edges(x):
        x = x.flatten(1)
        e = [[_norm(x[i] - x[j]) ** 2 for j in range(b)] for i in range(b)]
        m = max(max(r) for r in e)
        return [[v / m for v in r] for r in e]

    es, et = edges(s), edges(t)
    return sum((et[i][j] - es[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def ref_irg_transformation(sa, sb, ta, tb):
    b = len(sa)

    def moves(a, c):
        a, c = a.flatten(1), c.flatten(1)
        lam = [_norm(a[i] - c[i]) ** 2 for i in range(b)]
        m = max(lam)
        return [v / m for v in lam]

    ls, lt = moves(sa, sb), moves(ta, tb)
    return sum((lt[i] - ls[i]) ** 2 for i in range(b)) / b


def _pair(b, ds=(6,), dt=(9,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *ds, generator=g), torch.randn(b, *dt, generator=g)


# ----------------------------------------------------------------------- formulas
@pytest.mark.parametrize("b", [2, 3, 7])
def test_rkd_losses_match_the_paper(b):
    s, t = _pair(b, ds=(2, 3), dt=(5,), seed=b)
    assert R.rkd_distance_loss(s, t).item() == pytest.approx(ref_rkd_distance(s, t), rel=1e-9)
    assert R.rkd_angle_loss(s, t).item() == pytest.approx(ref_rkd_angle(s, t), rel=1e-9)


@pytest.mark.parametrize("b", [2, 5])
def test_sp_cc_irg_match_the_papers(b):
    s, t = _pair(b, ds=(3, 2, 2), dt=(4, 2, 2), seed=10 + b)
    assert R.sp_loss(s, t).item() == pytest.approx(ref_sp(s, t), rel=1e-9)
    for kernel in ("gaussian", "bilinear"):
        got = R.cc_loss(s, t, kernel=kernel, gamma=0.4, order=2).item()
        assert got == pytest.approx(ref_cc(s, t, kernel), rel=1e-9)
    got = R.cc_loss(s, t, kernel="gaussian", gamma=0.7, order=4).item()
    assert got == pytest.approx(ref_cc(s, t, "gaussian", 0.7, 4), rel=1e-9)
    assert R.irg_edge_loss(s, t).item() == pytest.approx(ref_irg_edge(s, t), rel=1e-9)
    sa, sb = _pair(b, ds=(5,), dt=(5,), seed=20 + b)
    ta, tb = _pair(b, ds=(8,), dt=(8,), seed=30 + b)
    got = R.irg_transformation_loss((sa, sb), (ta, tb)).item()
    assert got == pytest.approx(ref_irg_transformation(sa, sb, ta, tb), rel=1e-9)
    ls, lt = _pair(b, ds=(10,), dt=(10,), seed=40 + b)
    assert R.irg_vertex_loss(ls, lt).item() == pytest.approx(
        float(((ls - lt) ** 2).sum()) / ls.numel(), rel=1e-12)


def test_gaussian_taylor_expansion_approaches_the_rbf_kernel():
    x = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(x, x) ** 2)
    approx = R.correlation_matrix(x, "gaussian", gamma=0.4, order=12)
    torch.testing.assert_close(approx, exact, atol=1e-9, rtol=0)


def test_irg_transformation_matches_layers_of_different_shape():
    a, c = torch.randn(3, 8, 4, 4), torch.randn(3, 16, 2, 2)
    lam = R.irg_transformation(a, c)
    assert lam.shape == (3,) and torch.isfinite(lam).all() and lam.max() == pytest.approx(1.0)


# ----------------------------------------------------------------------- invariances
def test_rkd_distance_is_scale_invariant():
    s, t = _pair(6)
    base = R.rkd_distance_loss(s, t)
    torch.testing.assert_close(R.rkd_distance_loss(3.7 * s, 0.2 * t), base)
    torch.testing.assert_close(R.rkd_angle_loss(3.7 * s, 0.2 * t), R.rkd_angle_loss(s, t))


def test_sp_is_invariant_to_a_shared_permutation():
    s, t = _pair(6, ds=(3, 2, 2), dt=(5, 2, 2))
    perm = torch.randperm(6)
    torch.testing.assert_close(R.sp_loss(s[perm], t[perm]), R.sp_loss(s, t))
    torch.testing.assert_close(R.cc_loss(s[perm], t[perm]), R.cc_loss(s, t))
    torch.testing.assert_close(R.rkd_distance_loss(s[perm], t[perm]), R.rkd_distance_loss(s, t))


def test_identical_relations_give_zero_loss():
    s = torch.randn(5, 7)
    # a different embedding with the same geometry: rotated and scaled
    q, _ = torch.linalg.qr(torch.randn(7, 7))
    t = 2.5 * s @ q
    assert R.rkd_distance_loss(s, t).item() == pytest.approx(0, abs=1e-12)
    assert R.rkd_angle_loss(s, t).item() == pytest.approx(0, abs=1e-12)
    assert R.irg_edge_loss(s, t).item() == pytest.approx(0, abs=1e-12)
    assert R.sp_loss(s, s).item() == 0


# ----------------------------------------------------------------------- edge cases
def test_duplicate_samples_give_finite_losses_and_gradients():
    base = torch.randn(3, 6)
    s = torch.cat([base, base[:1]]).requires_grad_(True)  # sample 3 duplicates sample 0
    t = torch.cat([torch.randn(3, 4), torch.zeros(1, 4)])
    total = (R.rkd_distance_loss(s, t) + R.rkd_angle_loss(s, t) + R.sp_loss(s, t)
             + R.cc_loss(s, t) + R.irg_edge_loss(s, t))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()
    assert R.rkd_distance_loss(s, t).item() == pytest.approx(ref_rkd_distance(s.detach(), t))
    assert R.rkd_angle_loss(s, t).item() == pytest.approx(ref_rkd_angle(s.detach(), t))


def test_all_identical_samples_do_not_give_nan():
    s = torch.ones(3, 5, requires_grad=True)
    t = torch.randn(3, 5)
    for loss in (R.rkd_distance_loss, R.rkd_angle_loss, R.irg_edge_loss, R.sp_loss):
        v = loss(s, t)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(s.grad).all(), loss.__name__


@pytest.mark.parametrize("loss", [R.rkd_distance_loss, R.rkd_angle_loss, R.sp_loss, R.cc_loss,
                                  R.irg_edge_loss])
def test_bad_batches_are_user_errors(loss):
    with pytest.raises(UserError, match="at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(UserError, match="same batch"):
        loss(torch.randn(4, 4), torch.randn(3, 4))


def test_unknown_kernel_is_a_user_error():
    with pytest.raises(UserError, match="gaussian"):
        R.cc_loss(torch.randn(3, 4), torch.randn(3, 4), kernel="poly")

"""Relation losses: what a batch's samples look like *to each other*, teacher vs student.

Pure functions: tensors in, a scalar out. Each takes the student's and the teacher's
features for the same batch (any shape ``(b, ...)``; flattened per sample) and compares
batch-level structures (distances, angles, similarities, correlations), so the two networks
may have features of different widths.

RKD (Park et al., CVPR 2019), SP (Tung & Mori, ICCV 2019), CC (Peng et al., ICCV 2019),
IRG (Liu et al., CVPR 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError

#: squared distances below this count as zero (duplicate samples)
_EPS = 1e-12


def check_batch(student: Tensor, teacher: Tensor, loss: str) -> None:
    """Relation losses compare samples with each other: they need two or more of them, and
    the same number in both networks' features."""
    if student.shape[0] != teacher.shape[0]:
        raise UserError(
            f"{loss}: the student's features hold {student.shape[0]} samples and the "
            f"teacher's {teacher.shape[0]}; pass features of the same batch to both."
        )
    if student.shape[0] < 2:
        raise UserError(
            f"{loss} compares samples within a batch and got a batch of "
            f"{student.shape[0]}; use a batch size of at least 2 (set data.batch_size)."
        )


def _flat(x: Tensor) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """``(b, b)`` squared Euclidean distances between the rows of ``x`` (flattened per sample).

    The batch mean is subtracted first (distances do not change; the Gram-matrix formula
    keeps its precision), and the diagonal is exactly zero.
    """
    x = _flat(x)
    x = x - x.mean(dim=0, keepdim=True)
    sq = x.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.t()).clamp_min(0)
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def pairwise_distances(x: Tensor) -> Tensor:
    """``(b, b)`` Euclidean distances; zero (with a zero, finite gradient) for duplicates."""
    sq = pairwise_sq_distances(x)
    return torch.where(sq > _EPS, sq.clamp_min(_EPS).sqrt(), torch.zeros_like(sq))


def _mean_normalised(d: Tensor) -> Tensor:
    """Distances divided by their mean over the non-zero pairs (RKD's mu)."""
    nonzero = (d > 0).sum().clamp_min(1)
    mu = d.sum() / nonzero
    return d / mu.clamp_min(math.sqrt(_EPS))


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance-wise loss (Park et al., "Relational Knowledge Distillation", CVPR 2019,
    Eq. 4-5).

    ``psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu`` with ``mu`` the mean distance over the
    batch's non-zero pairs; the loss is the Huber (smooth-L1, delta = 1) difference between
    teacher and student potentials, averaged over all ``b^2`` ordered pairs.
    """
    check_batch(student, teacher, "RKD distance loss")
    d_s = _mean_normalised(pairwise_distances(student))
    d_t = _mean_normalised(pairwise_distances(teacher)).to(d_s.dtype)
    return F.smooth_l1_loss(d_s, d_t)


def triplet_cosines(x: Tensor) -> Tensor:
    """``(b, b, b)`` tensor ``c[j, i, k] = <e_ij, e_kj>`` with ``e_ij`` the unit vector from
    ``x_j`` to ``x_i`` (RKD's angle potential; zero when either difference is zero)."""
    x = _flat(x)
    x = x - x.mean(dim=0, keepdim=True)
    g = x @ x.t()
    diag = g.diagonal()
    # <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj, indexed [j, i, k]
    num = g.unsqueeze(0) - g.t().unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)
    dist = pairwise_distances(x)  # dist[i, j]
    den = dist.t().unsqueeze(2) * dist.unsqueeze(1)  # ||x_i - x_j|| * ||x_k - x_j|| at [j, i, k]
    ok = den > _EPS
    return torch.where(ok, num / den.clamp_min(_EPS), torch.zeros_like(num))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle-wise loss (Park et al., CVPR 2019, Eq. 6-7).

    ``psi_A(t_i, t_j, t_k) = <e_ij, e_kj>`` with ``e_ij = (t_i - t_j) / ||t_i - t_j||``; the
    loss is the Huber (smooth-L1) difference between teacher and student potentials,
    averaged over all ``b^3`` ordered triplets.
    """
    check_batch(student, teacher, "RKD angle loss")
    a_s = triplet_cosines(student)
    a_t = triplet_cosines(teacher).to(a_s.dtype)
    return F.smooth_l1_loss(a_s, a_t)


def similarity_matrix(x: Tensor) -> Tensor:
    """SP's ``G = row_l2_normalise(Q Q^T)`` with ``Q`` the ``(b, chw)`` flattened features."""
    q = _flat(x)
    return F.normalize(q @ q.t(), p=2, dim=1)


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving loss (Tung & Mori, ICCV 2019, Eq. 2-4), for one layer pair.

    ``||G_t - G_s||_F^2 / b^2`` with ``G`` the row-L2-normalised ``b x b`` Gram matrix of
    the flattened features. The method sums it over the chosen layer pairs.
    """
    check_batch(student, teacher, "SP loss")
    g_s = similarity_matrix(student)
    g_t = similarity_matrix(teacher).to(g_s.dtype)
    b = student.shape[0]
    return (g_t - g_s).pow(2).sum() / b**2


def correlation_matrix(x: Tensor, kernel: str = "gaussian", gamma: float = 0.4,
                       order: int = 2) -> Tensor:
    """CC's ``(b, b)`` correlation matrix ``Psi(F)`` of embeddings (Peng et al., ICCV 2019).

    ``bilinear``: ``k(x, y) = x^T y``. ``gaussian``: the RBF kernel
    ``exp(-gamma ||x - y||^2)`` on L2-normalised embeddings, through its ``order``-term
    Taylor expansion ``sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! (x^T y)^p`` (Eq. 9).
    """
    f = _flat(x)
    if kernel == "bilinear":
        return f @ f.t()
    if kernel != "gaussian":
        raise UserError(f"Unknown CC kernel {kernel!r}; use 'gaussian' or 'bilinear'.")
    f = F.normalize(f, p=2, dim=1)
    s = f @ f.t()
    out = torch.zeros_like(s)
    for p in range(order + 1):
        out = out + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s.pow(p)
    return out


def cc_loss(student: Tensor, teacher: Tensor, *, kernel: str = "gaussian",
            gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al., "Correlation Congruence for Knowledge
    Distillation", ICCV 2019, Eq. 7): ``||Psi(F_t) - Psi(F_s)||_F^2 / b^2``."""
    check_batch(student, teacher, "CC loss")
    c_s = correlation_matrix(student, kernel, gamma, order)
    c_t = correlation_matrix(teacher, kernel, gamma, order).to(c_s.dtype)
    b = student.shape[0]
    return (c_t - c_s).pow(2).sum() / b**2


def cc_benchmark_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """CC as the CRD benchmark measures it (Tian et al., ICLR 2020, RepDistiller's
    ``Correlation``, the CC authors' code restructured there; not the paper's Eq. 7).

    With ``delta_i = |e_s,i - e_t,i|`` the element-wise gap between the student's and the
    teacher's (already embedded, equally sized) vectors of sample ``i``, the loss is the mean
    over consecutive samples of the batch of ``sum_d delta_i,d * delta_i+1,d``: it couples
    each sample's gap with the next one's, in batch order.
    """
    check_batch(student, teacher, "CC (benchmark) loss")
    if student.shape != teacher.shape:
        raise UserError(
            f"CC (benchmark) compares embeddings of one size, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; embed both to method.feat_dim first."
        )
    s = _flat(student)
    delta = (s - _flat(teacher).to(s.dtype)).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def _max_normalised(d: Tensor) -> Tensor:
    return d / d.max().clamp_min(_EPS)


def irg_vertex_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """IRG vertex loss (Liu et al., "Knowledge Distillation via Instance Relationship Graph",
    CVPR 2019, Eq. 3, first term): squared distance between the teacher's and the
    student's vertices (instance features, e.g. logits), averaged over the elements."""
    if student.shape != teacher.shape:
        raise UserError(
            f"IRG vertex loss compares features of equal shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}; use the logits (method.vertex: logits)."
        )
    s = _flat(student)
    return (s - _flat(teacher).to(s.dtype)).pow(2).mean()


def irg_edge_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """IRG edge loss (Liu et al., CVPR 2019, Eq. 2-3): edges are the squared Euclidean
    distances between instances, divided by the graph's largest edge (the authors' scale
    normalisation); the loss is the mean squared difference over the ``b^2`` edges."""
    check_batch(student, teacher, "IRG edge loss")
    e_s = _max_normalised(pairwise_sq_distances(student))
    e_t = _max_normalised(pairwise_sq_distances(teacher)).to(e_s.dtype)
    return (e_t - e_s).pow(2).mean()


def match_layers(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two layers of one network to one shape for IRG-t: average-pool the larger
    spatial size to the smaller, and average groups of channels down to the smaller
    channel count (kdlab's choice; the paper leaves it open). A map paired with a vector is
    globally pooled first; vectors of different lengths are pooled to the shorter."""
    if a.dim() == 4 and b.dim() != 4:
        a = F.adaptive_avg_pool2d(a, 1).flatten(1)
    if b.dim() == 4 and a.dim() != 4:
        b = F.adaptive_avg_pool2d(b, 1).flatten(1)
    if a.dim() == 4:
        size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
        a = F.adaptive_avg_pool2d(a, size)
        b = F.adaptive_avg_pool2d(b, size)
        c = min(a.shape[1], b.shape[1])
        return _pool_channels(a, c), _pool_channels(b, c)
    a, b = _flat(a), _flat(b)
    n = min(a.shape[1], b.shape[1])
    return (F.adaptive_avg_pool1d(a.unsqueeze(1), n).squeeze(1),
            F.adaptive_avg_pool1d(b.unsqueeze(1), n).squeeze(1))


def _pool_channels(x: Tensor, c: int) -> Tensor:
    if x.shape[1] == c:
        return x
    n, _, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(n * h * w, 1, -1)
    y = F.adaptive_avg_pool1d(y, c)
    return y.reshape(n, h, w, c).permute(0, 3, 1, 2)


def irg_transformation(first: Tensor, second: Tensor) -> Tensor:
    """IRG-t vertex transformation between two layers of one network (Liu et al., CVPR 2019,
    Eq. 5): ``Lambda_i = ||f_i^{l1} - f_i^{l2}||_2^2`` per instance (after
    :func:`match_layers`), divided by the largest."""
    a, b = match_layers(first, second)
    lam = (_flat(a) - _flat(b)).pow(2).sum(dim=1)
    return _max_normalised(lam)


def irg_transformation_loss(student_pair: tuple[Tensor, Tensor],
                            teacher_pair: tuple[Tensor, Tensor]) -> Tensor:
    """IRG-t loss (Liu et al., CVPR 2019, Eq. 6, vertex term): mean squared difference
    between the teacher's and the student's per-instance transformations of one layer
    pair. (The paper drops the edge-transformation term; so do we.)"""
    check_batch(student_pair[0], teacher_pair[0], "IRG transformation loss")
    t_s = irg_transformation(*student_pair)
    t_t = irg_transformation(*teacher_pair).to(t_s.dtype)
    return (t_t - t_s).pow(2).mean()

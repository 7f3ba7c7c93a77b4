"""The losses of structured knowledge distillation (SKD: Liu et al., "Structured Knowledge
Distillation for Semantic Segmentation", CVPR 2019; the authors' code:
irfanICMLL/structure_knowledge_distillation, ``utils/criterion.py``, ``utils/utils.py``):
pair-wise similarity over spatial positions and the holistic adversarial terms: Wasserstein
with a gradient penalty (WGAN-GP: Gulrajani et al., "Improved Training of Wasserstein GANs",
NeurIPS 2017; the SKD authors') or hinge (Lim & Ye, "Geometric GAN", 2017; SAGAN's, and
CIRKD's ``losses/adv.py`` as ``train_kd.py`` runs it). Pure functions: tensors in, a scalar
out; the adversarial terms take the critic's outputs (and, for the gradient penalty, the
critic as a callable), so that the method decides which side each term trains. The
pixel-wise term is :func:`kdlab.methods.shared.dense.pixel_kl_loss`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.methods.shared.dense import check_maps
from kdlab.methods.shared.logits import _wide

# --------------------------------------------------------------------- pair-wise
#: how the maps are pooled before the pair-wise loss: a window that is a fraction of the
#: teacher's map (the SKD authors') or a fixed window (CIRKD's)
PAIR_POOLS = ("scale", "kernel")
#: how positions are normalised: by detached norms + 1e-8 (the SKD authors') or by
#: ``F.normalize``, the gradient through the norm (CIRKD's)
PAIR_NORMS = ("detached", "normalize")


def pair_pool(feature: Tensor, scale: float, like: Tensor | None = None) -> Tensor:
    """The SKD authors' spatial pooling before the pair-wise loss: max pooling with a square
    window (and stride) of ``int(size * scale)`` positions per dimension, ``ceil_mode=True``,
    the window taken from ``like``'s size when given (the authors size it on the teacher's
    map). ``scale = 0.5`` leaves a 2x2 grid of even maps, 3x3 of odd ones (65 -> 3)."""
    ref = feature if like is None else like
    kernel = (max(1, int(ref.shape[-2] * scale)), max(1, int(ref.shape[-1] * scale)))
    return F.max_pool2d(feature, kernel_size=kernel, stride=kernel, ceil_mode=True)


def spatial_similarity(feature: Tensor, detach_norm: bool = True,
                       norm: str | None = None) -> Tensor:
    """``(B, N, N)`` cosine similarities ``a_ij = f_i . f_j / (|f_i| |f_j|)`` between the
    ``N = h w`` positions of a ``(B, C, h, w)`` map, SKD §3.1 ("Pair-wise distillation").

    ``norm="detached"`` (or ``detach_norm``) is the authors' ``similarity``
    (``utils/utils.py``): the norms get ``1e-8`` added and are constants for the backward pass;
    ``norm="normalize"`` divides by ``max(|f_i|, 1e-12)`` with the gradient through the norm
    (``F.normalize``, CIRKD's ``losses/skd.py``). Half-precision maps (under autocast) are
    compared in float32.
    """
    if norm is None:
        norm = "detached" if detach_norm else "plain"
    f = _wide(feature).flatten(2)  # (B, C, N)
    if norm == "normalize":
        f = F.normalize(f, p=2, dim=1)
    else:
        length = f.norm(dim=1, keepdim=True) + 1e-8
        f = f / (length.detach() if norm == "detached" else length)
    with torch.autocast(f.device.type, enabled=False):  # small differences of cosines: fp32
        return f.transpose(1, 2) @ f


def pairwise_similarity_loss(student_feature: Tensor, teacher_feature: Tensor, *,
                             pool_scale: float = 0.5, detach_norm: bool = True,
                             pool: str = "scale", kernel: int = 2,
                             norm: str | None = None) -> Tensor:
    """Pair-wise distillation, SKD §3.1, Eq. 2: ``1/(N^2) sum_{i,j} (a_ij^s - a_ij^t)^2``,
    averaged over the batch, on the pooled maps.

    Pooling: ``pool="scale"`` is :func:`pair_pool` (the authors' scale 0.5, the window sized on
    the teacher's map, as their ``CriterionPairWiseforWholeFeatAfterPool``); ``pool="kernel"``
    a fixed ``kernel x kernel`` window and stride, ``ceil_mode`` (CIRKD's
    ``CriterionStructuralKD``: 2, so 64x128 maps leave 32x64 positions). Normalisation:
    :func:`spatial_similarity` (``norm`` or, when it is None, ``detach_norm``).

    Channels may differ (the matrices are ``N x N``). A student map of another spatial size
    is resized (bilinear) to the teacher's first.
    """
    check_maps(student_feature, teacher_feature, "Pair-wise distillation")
    if student_feature.shape[-2:] != teacher_feature.shape[-2:]:
        student_feature = F.interpolate(student_feature, size=teacher_feature.shape[-2:],
                                        mode="bilinear", align_corners=False)
    if pool == "kernel":
        s = F.max_pool2d(student_feature, kernel, kernel, ceil_mode=True)
        t = F.max_pool2d(teacher_feature, kernel, kernel, ceil_mode=True)
    else:
        s = pair_pool(student_feature, pool_scale, like=teacher_feature)
        t = pair_pool(teacher_feature, pool_scale)
    a_s = spatial_similarity(s, detach_norm, norm)
    a_t = spatial_similarity(t, detach_norm, norm)
    n = a_t.shape[-1]
    return (a_s - a_t).pow(2).sum() / (n * n) / a_t.shape[0]


# --------------------------------------------------------------------- holistic
def critic_loss(critic_student: Tensor, critic_teacher: Tensor) -> Tensor:
    """The critic's Wasserstein loss, SKD §3.1 ("Holistic distillation"), Eq. 3 (the paper
    writes ``D(Q|I)``; the authors' critic sees the score map only, see
    :mod:`kdlab.methods.skd.discriminator`):
    ``E[D(Q^s)] - E[D(Q^t)]``, minimised by the critic (teacher maps are "real"), each
    expectation a mean over the critic's outputs (the authors' ``CriterionAdv``, wgan-gp)."""
    return critic_student.mean() - critic_teacher.mean()


def generator_loss(critic_student: Tensor) -> Tensor:
    """The student's (generator's) holistic loss, SKD Eq. 3 seen from the student:
    ``-E[D(Q^s)]`` (the authors' ``CriterionAdvForG``; the same for hinge, CIRKD's)."""
    return -critic_student.mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
                     alpha: Tensor | None = None) -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017, Eq. 3; SKD §3.1 trains its critic with it):
    ``E[(||grad_x D(x)||_2 - 1)^2]`` at ``x = alpha * real + (1 - alpha) * fake``.

    ``alpha`` is one uniform draw per sample (drawn here when not given, shape ``(B, 1, ...)``
    broadcastable to the inputs). The interpolation is built from detached inputs (the
    penalty trains only the critic); the gradient is taken with ``create_graph=True`` so the
    penalty can be back-propagated to the critic's parameters. The norm runs over every
    element of a sample, the mean over the batch (the authors' ``CriterionAdditionalGP``).
    """
    real, fake = real.detach(), fake.detach()
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device,
                           dtype=real.dtype)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with torch.enable_grad():
        out = critic(x)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)
    return (norm - 1).pow(2).mean()


def hinge_critic_loss(critic_student: Tensor, critic_teacher: Tensor) -> Tensor:
    """The critic's hinge loss: ``E[max(0, 1 - D(Q^t))] + E[max(0, 1 + D(Q^s))]``, each
    expectation a mean over the critic's outputs (CIRKD's ``CriterionAdv('hinge')``)."""
    return F.relu(1.0 - critic_teacher).mean() + F.relu(1.0 + critic_student).mean()

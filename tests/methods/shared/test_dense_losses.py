"""The dense (per-pixel) distillation losses of :mod:`kdlab.methods.shared.dense` and the
dtypes of the dense and detection losses, against slow, direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import UserError
from kdlab.methods.shared.dense import match_size, pixel_kl_loss
from support.references import ref_kl_of, ref_softmax


def ref_pixel_kl(zs: torch.Tensor, zt: torch.Tensor, tau: float) -> float:
    """tau^2 / (B h w) sum over pixels of KL(softmax(z_t / tau) || softmax(z_s / tau))."""
    b, _, h, w = zs.shape
    total = 0.0
    for n in range(b):
        for i in range(h):
            for j in range(w):
                total += ref_kl_of(ref_softmax(zt[n, :, i, j].tolist(), tau),
                                   ref_softmax(zs[n, :, i, j].tolist(), tau))
    return tau * tau * total / (b * h * w)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pixel_kl_matches_the_per_pixel_formula(tau):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g) * 2
    got = pixel_kl_loss(zs, zt, tau)
    assert got.item() == pytest.approx(ref_pixel_kl(zs, zt, tau), rel=1e-5)
    assert pixel_kl_loss(zt, zt, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_pixel_kl_brings_maps_to_one_size_first():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    up = F.interpolate(zs, size=(6, 6), mode="bilinear", align_corners=False)
    assert pixel_kl_loss(zs, zt, 2.0).item() == pytest.approx(ref_pixel_kl(up, zt, 2.0),
                                                              rel=1e-5)
    s, t = match_size(zt, zs)  # the teacher smaller: it is the one upsampled
    assert s.shape == t.shape == (2, 4, 6, 6) and torch.equal(s, zt)


def test_pixel_kl_refuses_different_classes_and_flat_logits():
    with pytest.raises(UserError, match="same classes"):
        pixel_kl_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4))
    with pytest.raises(UserError, match="height, width"):
        pixel_kl_loss(torch.randn(2, 3), torch.randn(2, 3))


def test_dense_losses_keep_float64_and_widen_half_precision():
    """The step-exact parity checks run in float64: the pixel CE and the detection KD losses
    widen half-precision inputs to float32 (autocast) but never narrow float64."""
    from kdlab.methods.shared.detection import fpn_app_loss, roi_kl_loss, roi_l2_loss
    from kdlab.tasks.segmentation.task import pixel_ce

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    assert pixel_ce(s, torch.randint(0, 5, (2, 8, 8), generator=g), 255).dtype == torch.float64
    assert fpn_app_loss({"0": s}, {"0": s + 1}).dtype == torch.float64
    logits = s[:, :, 0, 0]
    assert roi_kl_loss(logits, logits.flip(0)).dtype == torch.float64
    deltas = torch.randn(3, 12, generator=g, dtype=torch.float64)
    assert roi_l2_loss(deltas, deltas + 1).dtype == torch.float64
    half = deltas.bfloat16()
    assert roi_l2_loss(half, half + 1).dtype == torch.float32
    assert pixel_ce(s.half(), torch.zeros(2, 8, 8, dtype=torch.long), 255).dtype == torch.float32

"""ReviewKD on a detector's FPN (the authors' Detectron2 form): every level reviewed, ABFs of
the FPN width, no resize, HCL without an embedding level; against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods import METHODS, build_distiller
from kdlab.methods.reviewkd import ReviewKD, ReviewKDDetection
from kdlab.tasks import build_task
from support.detection import scenes, tiny_pair

TASK = build_task("detection")


def distiller(options: dict | None = None) -> ReviewKDDetection:
    teacher, s = tiny_pair()
    return build_distiller("reviewkd", options or {}, s, teacher, task=TASK).train()


def direct_hcl(fs, ft) -> torch.Tensor:
    """HCL of one pair written out: weights 1, 1/2, 1/4, 1/8 for full, 4x4, 2x2, 1x1 pooled
    (only sizes smaller than the map), divided by the weights used."""
    loss, weight, used = F.mse_loss(fs, ft), 1.0, 1.0
    for level in (4, 2, 1):
        if level < fs.shape[2]:
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level),
                                              F.adaptive_avg_pool2d(ft, level))
            used += weight
    return loss / used


def direct_abf(m, x, residual):
    x = m.conv1(x)
    if m.att_conv is not None:
        residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
        att = m.att_conv(torch.cat([x, residual], dim=1))
        x = x * att[:, 0:1] + residual * att[:, 1:2]
    return m.conv2(x), x


def test_reviewkd_resolves_to_its_detection_variant():
    assert METHODS.get("reviewkd") is ReviewKD
    assert ReviewKD.for_task("detection") is ReviewKDDetection
    assert ReviewKD.for_task("classification") is ReviewKD


def test_one_abf_per_fpn_level_of_the_fpn_width():
    d = distiller()
    assert d.levels == ["0", "1", "2", "3", "pool"] and len(d.abfs) == 5
    width = d.student.fpn_channels
    for i, abf in enumerate(d.abfs):
        assert abf.conv1[0].in_channels == width and abf.conv1[0].out_channels == width
        assert (abf.att_conv is None) == (i == 4)  # the deepest level does not fuse
    assert distiller({"mid_channels": 16}).abfs[0].conv1[0].out_channels == 16


def test_the_loss_equals_a_direct_computation():
    d = distiller({"weight": 1.2})
    x, targets = scenes(seed=1)
    torch.manual_seed(4)
    _, losses = d(x, targets)
    assert set(losses) == {"ce", "review"}
    torch.manual_seed(4)
    s = d.student.features(x, targets)
    with torch.no_grad():
        t_fpn = d.teacher.net.backbone(s.images)
    levels = list(s.fpn)
    fused, residual = [None] * len(levels), None
    for i in reversed(range(len(levels))):
        fused[i], residual = direct_abf(d.abfs[i], s.fpn[levels[i]], residual)
    want = 1.2 * sum(direct_hcl(f, t_fpn[k]) for f, k in zip(fused, levels, strict=True))
    assert losses["review"].item() == pytest.approx(want.item(), rel=1e-5)


def test_no_warm_up_by_default_and_the_ramp_as_a_setting():
    d = distiller()
    d.set_epoch(0, 10)
    assert d._ramp == 1.0
    ramped = distiller({"warmup_epochs": 4})
    ramped.set_epoch(0, 10)
    assert ramped._ramp == 0.25


def test_a_few_training_steps_have_finite_losses_and_skip_the_teachers_roi(monkeypatch):
    d = distiller()
    monkeypatch.setattr(d.teacher, "lens", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("ReviewKD ran the teacher's ROI head")))
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    for step in range(3):
        _, losses = d(*scenes(seed=10 + step))
        assert all(math.isfinite(v.item()) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(p.grad is None for p in d.teacher.parameters())

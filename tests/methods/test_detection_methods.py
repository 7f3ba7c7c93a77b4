"""Detection distillation (FCFD App. D-E): every loss term against a direct computation,
gradient routing, a few training steps of each method, inheriting, AMP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor

from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.fcfd.detection import FCFDDetection
from kdlab.methods.fcfd.online import OnlineFCFD
from kdlab.methods.fitnet.detection import FitNetDetection
from kdlab.methods.kd.detection import KDDetection
from kdlab.methods.shared.detection import fpn_app_loss, roi_kl_loss, roi_l2_loss
from kdlab.tasks import build_task
from support.detection import CLASSES, scenes, tiny_pair
from support.references import ref_kl, ref_l2

TASK = build_task("detection")


def distiller(name: str, options: dict | None = None, student: str = "frcnn_tiny_r10_slim"):
    teacher, s = tiny_pair(student)
    return build_distiller(name, options or {}, s, teacher, task=TASK).train()


# --------------------------------------------------------------------- pure losses
def test_roi_kl_matches_the_per_proposal_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for tau in (1.0, 2.0):
        assert roi_kl_loss(s, t, tau).item() == pytest.approx(ref_kl(s, t, tau), rel=1e-5)
        assert roi_kl_loss(s, t, tau, "sum").item() == pytest.approx(7 * ref_kl(s, t, tau),
                                                                   rel=1e-5)
    with pytest.raises(UserError, match="reduction"):
        roi_kl_loss(s, t, 1.0, "batchmean")


def test_roi_l2_skips_the_background_deltas():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4 * 4, generator=g), torch.randn(6, 4 * 4, generator=g)
    direct = sum((a - b) ** 2 for ra, rb in zip(s.tolist(), t.tolist(), strict=True)
                 for a, b in zip(ra[4:], rb[4:], strict=True))
    assert roi_l2_loss(s, t).item() == pytest.approx(direct / (6 * 12), rel=1e-5)
    assert roi_l2_loss(s, t, "sum").item() == pytest.approx(direct, rel=1e-5)
    assert roi_l2_loss(s, t, skip_background=False).item() == pytest.approx(ref_l2(s, t),
                                                                            rel=1e-5)


def test_fpn_app_sums_the_levels():
    g = torch.Generator().manual_seed(2)
    s = {"0": torch.randn(2, 3, 8, 8, generator=g), "pool": torch.randn(2, 3, 1, 1, generator=g)}
    t = {k: torch.randn(v.shape, generator=g) for k, v in s.items()}
    want = sum(ref_l2(s[k], t[k]) for k in s)
    assert fpn_app_loss(s, t).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(UserError, match="teacher FPN levels"):
        fpn_app_loss({"p9": s["0"]}, t)


# --------------------------------------------------------------------- method resolution
def test_the_registered_names_resolve_to_the_detection_variants():
    assert METHODS.get("fcfd").for_task("detection") is FCFDDetection
    assert METHODS.get("kd").for_task("detection") is KDDetection
    assert METHODS.get("fitnet").for_task("detection") is FitNetDetection
    assert METHODS.get("fcfd").for_task("classification") is METHODS.get("fcfd")
    with pytest.raises(UserError, match="does not support task 'detection'"):
        OnlineFCFD.for_task("detection")
    with pytest.raises(UserError, match="does not support task 'classification'"):
        FCFDDetection.for_task("classification")


def test_a_classification_network_is_refused(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match="not a detector"):
        build_distiller("fcfd", {}, student, teacher, task=TASK)


# --------------------------------------------------------------------- FCFD terms
def _direct_terms(d: FCFDDetection, x, targets) -> dict[str, float]:
    """Every FCFD term from the formulas of App. D.1, through the detectors' own modules and
    the plain reference loops (same RNG state, so the same sampled proposals)."""
    s_det, t_det = d.student, d.teacher
    s = s_det.features(x, targets)
    props, sizes = s.proposals, s.image_sizes
    t_fpn = t_det.net.backbone(s.images)

    def roi(det, fpn):
        pooled = det.net.roi_heads.box_roi_pool(fpn, props, sizes)
        return det.net.roi_heads.box_predictor(det.net.roi_heads.box_head(pooled))

    p_t = roi(t_det, t_fpn)
    bridged = {k: d.b_st[k](s.fpn[k]) for k in s.fpn}
    p_st = roi(t_det, bridged)
    p_ts = roi(s_det, {k: d.b_ts[k](t_fpn[k]) for k in d.b_ts})
    p_s = roi(s_det, s.fpn)

    def l2(a, b):  # box deltas of the object classes, mean over proposals and coordinates
        return ref_l2(a[:, 4:], b[:, 4:])

    return {
        "ce": sum(v.item() for v in s.losses.values()),
        "app": sum(ref_l2(bridged[k], t_fpn[k]) for k in ("0", "1", "2", "3", "pool")),
        "func_kl": ref_kl(p_st[0], p_t[0], 1.0), "func_l2": l2(p_st[1], p_t[1]),
        "funcp_kl": ref_kl(p_ts[0], p_t[0], 1.0), "funcp_l2": l2(p_ts[1], p_t[1]),
        "kd": ref_kl(p_s[0], p_t[0], 1.0), "kd_l2": l2(p_s[1], p_t[1]),
    }


def test_every_fcfd_term_equals_its_direct_computation():
    d = distiller("fcfd")
    x, targets = scenes(seed=3)
    torch.manual_seed(7)
    _, losses = d(x, targets)
    torch.manual_seed(7)
    with torch.no_grad():
        want = _direct_terms(d, x, targets)
    assert set(losses) == set(want)
    for k, v in want.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-4, abs=1e-7), k


def test_weights_scale_terms_and_zero_weights_drop_them():
    x, targets = scenes(seed=4)
    base = distiller("fcfd")
    torch.manual_seed(0)
    _, ref = base(x, targets)
    d = distiller("fcfd", {"app_weight": 2.0, "funcp_kl_weight": 0.0, "funcp_l2_weight": 0.0,
                           "kd_l2_weight": 0.5, "reduction": "sum"})
    torch.manual_seed(0)
    _, out = d(x, targets)
    assert "funcp_kl" not in out and "funcp_l2" not in out
    assert out["app"].item() == pytest.approx(2 * ref["app"].item(), rel=1e-5)
    r = sum(len(lab) for lab in d.student.features(x, targets).labels)
    assert out["func_kl"].item() == pytest.approx(r * ref["func_kl"].item(), rel=1e-4)
    deltas = 4 * CLASSES
    assert out["kd_l2"].item() == pytest.approx(0.5 * r * deltas * ref["kd_l2"].item(),
                                                rel=1e-4)


def test_kd_and_fitnet_are_the_matching_fcfd_terms():
    x, targets = scenes(seed=5)
    fcfd = distiller("fcfd")
    torch.manual_seed(1)
    _, full = fcfd(x, targets)
    kd = distiller("kd")
    torch.manual_seed(1)
    _, kd_out = kd(x, targets)
    assert set(kd_out) == {"ce", "kd", "kd_l2"}
    for k in kd_out:
        assert kd_out[k].item() == pytest.approx(full[k].item(), rel=1e-5)
    fit = distiller("fitnet")
    torch.manual_seed(1)
    _, fit_out = fit(x, targets)
    assert set(fit_out) == {"ce", "hint"}
    assert fit_out["hint"].item() == pytest.approx(full["app"].item(), rel=1e-5)


# --------------------------------------------------------------------- gradients
def _grads(d, loss):
    named = dict(d.named_parameters())
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True, retain_graph=True)
    return {k for (k, _), g in zip(named.items(), grads, strict=True)
            if g is not None and g.abs().sum() > 0}


def test_gradients_reach_the_student_and_bridges_and_never_the_teacher():
    d = distiller("fcfd")
    teacher = d.teacher
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
    x, targets = scenes(seed=6)
    torch.manual_seed(0)
    _, losses = d(x, targets)
    torch.manual_seed(0)
    proposals = d.student.features(x, targets).proposals
    pooler = d.student.roi_heads.box_roi_pool
    used = {str(int(v)) for v in pooler.map_levels(proposals).unique()}  # levels with ROIs
    assert used and used <= set(d.b_ts)  # B_ts: the levels the student's ROI head reads
    hit = {term: _grads(d, v) for term, v in losses.items()}
    trainable = {k for k, p in d.named_parameters() if p.requires_grad
                 and not (k.startswith("b_ts.") and k.split(".")[1] not in used)}
    # every student parameter and bridge (B_ts of a level without ROIs gets a zero gradient)
    assert set().union(*hit.values()) == trainable
    body, roi = "student.net.backbone.body.", "student.net.roi_heads."
    assert any(k.startswith(body) for k in hit["app"] | hit["func_kl"])
    for term in ("app", "func_kl", "func_l2"):
        assert not any(k.startswith((roi, "b_ts.")) for k in hit[term]), term
    for term in ("funcp_kl", "funcp_l2"):
        assert all(k.startswith((roi, "b_ts.")) for k in hit[term]), term
        assert any(k.startswith("b_ts.") for k in hit[term])
    for term in ("kd", "kd_l2"):
        assert not any(k.startswith(("b_st.", "b_ts.")) for k in hit[term]), term
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and d.student.training


# --------------------------------------------------------------------- training
@pytest.mark.parametrize("name, options, student", [
    ("ce", {}, "frcnn_tiny_r10_slim"),
    ("kd", {}, "frcnn_tiny_r10_slim"),
    ("fitnet", {}, "frcnn_tiny_r10_slim"),
    ("fcfd", {}, "frcnn_tiny_r10_slim"),
    ("fcfd", {"inherit": True}, "frcnn_tiny_r10"),
])
def test_a_few_training_steps_have_finite_losses(name, options, student):
    teacher, s = tiny_pair(student)
    d = build_distiller(name, options, s, teacher if name != "ce" else None, task=TASK).train()
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in d.parameters()]
    for step in range(3):
        x, targets = scenes(seed=10 + step)
        logits, losses = d(x, targets)
        assert logits is not None and logits.shape[1] == CLASSES + 1
        total = sum(losses.values())
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, d.parameters(), strict=True))
    d.eval()
    with torch.no_grad():
        assert set(d.student(scenes(seed=0)[0])[0]) == {"boxes", "scores", "labels"}


def test_the_inheriting_strategy_starts_from_the_teacher():
    teacher, student = tiny_pair("frcnn_tiny_r10")
    d = build_distiller("kd", {"inherit": True}, student, teacher, task=TASK)
    t_state = teacher.net.roi_heads.state_dict()
    for k, v in d.student.net.roi_heads.state_dict().items():
        assert torch.equal(v, t_state[k])
    slim_t, slim_s = tiny_pair("frcnn_tiny_r10_slim")
    with pytest.raises(UserError, match="inheriting strategy"):
        build_distiller("fcfd", {"inherit": True}, slim_s, slim_t, task=TASK)


def test_fcfd_under_autocast_has_float32_finite_losses():
    d = distiller("fcfd")
    x, targets = scenes(seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d(x, targets)
    for k, v in losses.items():
        assert v.dtype == torch.float32 and math.isfinite(v.item()), k
    sum(losses.values()).backward()


def test_the_func_prime_pass_keeps_its_own_box_head_statistics():
    """With a BatchNorm box head, L_func' runs on its own running statistics: the student's
    buffers change only with its own features."""
    teacher, student = tiny_pair("frcnn_tiny_r10_slim")
    for det in (teacher, student):
        roi = det.net.roi_heads
        size = roi.box_roi_pool.output_size
        roi.box_head = FastRCNNConvFCHead((64, *size), [16], [32], norm_layer=nn.BatchNorm2d)
        roi.box_predictor = FastRCNNPredictor(32, CLASSES + 1)
    d = build_distiller("fcfd", {}, student, teacher, task=TASK).train()
    assert d.has_path_stats
    x, targets = scenes(seed=9)
    bn = student.net.roi_heads.box_head[0][1]
    start = bn.running_mean.clone()
    torch.manual_seed(3)
    d(x, targets)
    after_fcfd = bn.running_mean.clone()
    bn.running_mean.copy_(start)
    bn.num_batches_tracked.zero_()
    torch.manual_seed(3)
    student.features(x, targets)
    torch.testing.assert_close(after_fcfd, bn.running_mean)
    assert not torch.equal(after_fcfd, start)


def test_a_detection_combo_sums_its_parts_once():
    from kdlab.methods.combo.detection import DetectionCombo

    assert METHODS.get("combo").for_task("detection") is DetectionCombo
    x, targets = scenes(seed=12)
    combo = distiller("combo", {"parts": [{"name": "kd", "kd_l2_weight": 0.0},
                                          {"name": "fitnet"}]})
    torch.manual_seed(2)
    _, out = combo(x, targets)
    assert set(out) == {"ce", "kd", "hint"}
    fcfd = distiller("fcfd")
    torch.manual_seed(2)
    _, full = fcfd(x, targets)
    for k, ref in (("ce", "ce"), ("kd", "kd"), ("hint", "app")):
        assert out[k].item() == pytest.approx(full[ref].item(), rel=1e-5), k
    sum(out.values()).backward()
    with pytest.raises(UserError, match="cannot be part of a detection combo"):
        distiller("combo", {"parts": [{"name": "rkd"}]})
    with pytest.raises(UserError, match="Unknown key"):
        distiller("combo", {"parts": [{"name": "kd", "num_paths": 2}]})


@pytest.mark.parametrize(("name", "options"), [
    ("fcfd", {}), ("kd", {}), ("fitnet", {}),
    ("combo", {"parts": [{"name": "kd"}, {"name": "fitnet"}]})])
def test_the_teacher_backbone_runs_once_per_step_under_inference_mode(name, options):
    d = distiller(name, options)
    first = next(m for m in d.teacher.modules() if isinstance(m, nn.Conv2d))
    calls: list[bool] = []
    first.register_forward_pre_hook(lambda *_: calls.append(torch.is_inference_mode_enabled()))
    x, targets = scenes(seed=13)
    _, terms = d(x, targets)
    sum(terms.values()).backward()  # what the terms saved was cloned out of inference mode
    assert calls == [True]

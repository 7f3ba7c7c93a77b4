"""FGFI on a detector's FPN (Wang et al., CVPR 2019): the imitation mask, the IoU conventions,
the loss and the method against direct computations; warm-up, gradients, settings."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.fgfi import FGFI
from kdlab.methods.fgfi.adapter import INIT_STD, Adaptation
from kdlab.methods.fgfi.losses import fgfi_loss
from kdlab.methods.fgfi.mask import imitation_masks, legacy_box_iou
from kdlab.tasks import build_task
from support.detection import scenes, tiny_pair

TASK = build_task("detection")


def distiller(options: dict | None = None, student: str = "frcnn_tiny_r10_slim") -> FGFI:
    teacher, s = tiny_pair(student)
    return build_distiller("fgfi", options or {}, s, teacher, task=TASK).train()


# --------------------------------------------------------------------- direct references
def iou(a, b, plus: float) -> float:
    """IoU of two boxes (x1, y1, x2, y2) with widths ``x2 - x1 + plus``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + plus)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + plus)
    inter = iw * ih
    union = (a[2] - a[0] + plus) * (a[3] - a[1] + plus) + (b[2] - b[0] + plus) * (
        b[3] - b[1] + plus) - inter
    return inter / union if union > 0 else 0.0


def direct_masks(anchors, boxes, psi, plus, scope):
    """FGFI's rule, box by box and anchor by anchor."""
    grids = [a.tolist() for a in anchors]
    flat = [[(lv, y, x, an) for y, row in enumerate(g) for x, cell in enumerate(row)
             for an in cell] for lv, g in enumerate(grids)]
    out = [[[False] * len(g[0]) for _ in g] for g in grids]
    for box in boxes.tolist():
        best = [max(iou(an, box, plus) for *_, an in level) for level in flat]
        for lv, level in enumerate(flat):
            top = max(best) if scope == "image" else best[lv]
            for _, y, x, an in level:
                if iou(an, box, plus) > psi * top:
                    out[lv][y][x] = True
    return [torch.tensor(m) for m in out]


def _anchors(seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w, stride, size in ((6, 5, 4, 6.0), (3, 3, 8, 14.0)):
        ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride,
                                indexing="ij")
        sizes = size * (0.7 + 0.6 * torch.rand(3, 2, generator=g))
        c = torch.stack([xs, ys], -1)[:, :, None].double()
        half = sizes.double()[None, None] / 2
        out.append(torch.cat([c - half, c + half], -1))
    return out


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("scope", ["image", "level"])
@pytest.mark.parametrize("psi", [0.5, 0.8])
def test_the_mask_is_the_union_of_anchors_above_psi_times_each_boxs_max(legacy, scope, psi):
    anchors = _anchors(0)
    boxes = torch.tensor([[2.0, 3.0, 9.0, 12.0], [10.0, 1.0, 22.0, 9.5]], dtype=torch.float64)
    got = imitation_masks(anchors, boxes, psi, legacy_iou=legacy, scope=scope)
    want = direct_masks(anchors, boxes, psi, 1.0 if legacy else 0.0, scope)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bool and torch.equal(g, w)
    assert any(g.any() for g in got)


def test_no_box_sets_nothing_and_bad_settings_are_refused():
    anchors = _anchors(1)
    masks = imitation_masks(anchors, torch.zeros(0, 4), 0.5)
    assert [tuple(m.shape) for m in masks] == [(6, 5), (3, 3)] and not any(m.any() for m in masks)
    with pytest.raises(UserError, match="scope"):
        imitation_masks(anchors, torch.zeros(0, 4), scope="all")
    with pytest.raises(UserError, match="psi"):
        imitation_masks(anchors, torch.zeros(0, 4), psi=1.5)


def test_legacy_iou_is_the_plus_one_pixel_convention():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(7, 4, generator=g, dtype=torch.float64) * 20
    a[:, 2:] += a[:, :2]
    b = torch.rand(3, 4, generator=g, dtype=torch.float64) * 20
    b[:, 2:] += b[:, :2]
    got = legacy_box_iou(a, b)
    for i, p in enumerate(a.tolist()):
        for j, q in enumerate(b.tolist()):
            assert got[i, j].item() == pytest.approx(iou(p, q, 1.0), rel=1e-12)


def test_the_loss_divides_the_masked_sum_by_twice_the_masked_locations():
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 2, 2, generator=g)]
    t = [torch.randn(x.shape, generator=g) for x in s]
    m = [torch.rand(2, 4, 5, generator=g) > 0.6, torch.rand(2, 2, 2, generator=g) > 0.5]
    total, count = 0.0, 0
    for sl, tl, ml in zip(s, t, m, strict=True):
        for b in range(sl.shape[0]):
            for y in range(sl.shape[2]):
                for x in range(sl.shape[3]):
                    if ml[b, y, x]:
                        count += 1
                        total += sum((tl[b, c, y, x].item() - sl[b, c, y, x].item()) ** 2
                                     for c in range(sl.shape[1]))
    assert fgfi_loss(s, t, m).item() == pytest.approx(total / (2 * count), rel=1e-5)
    empty = [torch.zeros_like(x) for x in m]
    assert fgfi_loss(s, t, empty).item() == 0.0
    with pytest.raises(UserError, match="shapes differ"):
        fgfi_loss(s, t[::-1], m)


def test_the_adaptation_layer_is_the_authors_conv():
    torch.manual_seed(0)
    a = Adaptation(8, 6)
    conv = a[0]
    assert len(a) == 1 and conv.kernel_size == (3, 3) and conv.bias is not None
    assert conv.weight.abs().max() <= 2 * INIT_STD and conv.weight.std() > 0.5 * INIT_STD
    assert conv.bias.abs().max() > 10 * INIT_STD  # PyTorch's default bias, not zeroed
    with_relu = Adaptation(8, 6, relu=True)
    assert isinstance(with_relu[1], torch.nn.ReLU)


# --------------------------------------------------------------------- the method
def test_fgfi_is_a_detection_method():
    assert METHODS.get("fgfi") is FGFI
    assert FGFI.for_task("detection") is FGFI
    with pytest.raises(UserError, match="does not support task 'classification'"):
        FGFI.for_task("classification")


def test_the_anchor_grids_are_the_rpns_anchors():
    d = distiller()
    x, targets = scenes(seed=1)
    s = d.student.features(x, targets)
    grids = d.student.anchor_grids(s)
    from torchvision.models.detection.image_list import ImageList

    flat = d.student.net.rpn.anchor_generator(ImageList(s.images, s.image_sizes),
                                              list(s.fpn.values()))[0]
    assert torch.equal(torch.cat([g.reshape(-1, 4) for g in grids]), flat)
    assert [g.shape[:2] for g in grids] == [f.shape[-2:] for f in s.fpn.values()]


def test_the_loss_equals_a_direct_computation_after_the_warm_up():
    d = distiller({"warmup_steps": 0})
    x, targets = scenes(seed=2)
    torch.manual_seed(5)
    _, losses = d(x, targets)
    assert set(losses) == {"ce", "fgfi"}
    torch.manual_seed(5)
    with torch.no_grad():
        s = d.student.features(x, targets)
        t_fpn = d.teacher.net.backbone(s.images)
        anchors = d.student.anchor_grids(s)
        per_image = [direct_masks(anchors, g, 0.5, 0.0, "image") for g in s.gt_boxes]
        total, count = 0.0, 0
        for lv, k in enumerate(s.fpn):
            diff = (t_fpn[k] - d.adapters[k](s.fpn[k])).pow(2).sum(1)
            for b, masks in enumerate(per_image):
                total += diff[b][masks[lv]].sum().item()
                count += int(masks[lv].sum())
    assert count > 0
    assert losses["fgfi"].item() == pytest.approx(0.01 * total / (2 * count), rel=1e-4)


def test_the_warm_up_zeroes_the_first_steps_and_its_clock_is_saved():
    d = distiller({"warmup_steps": 2, "weight": 1.0})
    x, targets = scenes(seed=3)
    values = []
    for _ in range(3):
        _, losses = d(x, targets)
        values.append(losses["fgfi"].item())
    assert values[0] == values[1] == 0.0 and values[2] > 0
    assert int(d.steps) == 3 and "steps" in d.state_dict()
    d.eval()
    with torch.no_grad():
        d(x, targets)
    assert int(d.steps) == 3  # only training steps count
    fresh = distiller({"warmup_steps": 2, "weight": 1.0})
    fresh.load_state_dict(d.state_dict())
    _, losses = fresh(x, targets)
    assert losses["fgfi"].item() > 0


def test_gradients_reach_the_student_fpn_and_adapters_only():
    d = distiller({"warmup_steps": 0})
    x, targets = scenes(seed=4)
    _, losses = d(x, targets)
    named = dict(d.named_parameters())
    grads = torch.autograd.grad(losses["fgfi"], list(named.values()), allow_unused=True)
    hit = {k for (k, _), g in zip(named.items(), grads, strict=True)
           if g is not None and g.abs().sum() > 0}
    assert any(k.startswith("adapters.") for k in hit)
    assert any(k.startswith("student.net.backbone.fpn.") for k in hit)
    assert not any(k.startswith(("student.net.rpn.", "student.net.roi_heads.")) for k in hit)
    assert all(not p.requires_grad for p in d.teacher.parameters())


def test_the_teachers_roi_head_is_not_run(monkeypatch):
    d = distiller()

    def refuse(*args, **kwargs):
        raise AssertionError("FGFI ran the teacher's ROI head")

    monkeypatch.setattr(d.teacher, "lens", refuse)
    _, losses = d(*scenes(seed=5))
    assert math.isfinite(losses["fgfi"].item())


def test_levels_scope_and_shared_adapter_settings():
    d = distiller({"levels": ["1", "2"], "shared_adapter": True, "scope": "level",
                   "warmup_steps": 0})
    assert list(d.adapters) == ["shared"] and d.adapter("1") is d.adapter("2")
    x, targets = scenes(seed=6)
    assert set(d.masks(d.student.features(x, targets))) == {"1", "2"}
    _, losses = d(x, targets)
    assert losses["fgfi"].item() > 0
    with pytest.raises(UserError, match="FPN levels"):
        distiller({"levels": ["p9"]})
    with pytest.raises(UserError, match="scope"):
        distiller({"scope": "batch"})


def test_a_few_training_steps_under_a_combo_with_kd():
    teacher, s = tiny_pair()
    d = build_distiller("combo", {"parts": [{"name": "fgfi", "warmup_steps": 1},
                                            {"name": "kd"}]}, s, teacher, task=TASK).train()
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    for step in range(3):
        _, losses = d(*scenes(seed=20 + step))
        assert set(losses) == {"ce", "fgfi", "kd", "kd_l2"}
        assert all(math.isfinite(v.item()) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert int(d.parts["fgfi"].steps) == 3

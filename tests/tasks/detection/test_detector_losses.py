"""The detector option ``losses: detectron2`` computes Detectron2 v0.6's training losses; the
default stays torchvision's.

The fixture (``benchmarks/parity/detectron2_losses_fixture.py``) ran Detectron2's own
``RPN.losses`` and ``FastRCNNOutputLayers.losses`` (defaults of ``config/defaults.py``) on
seeded float64 inputs stored beside the values; here kdlab's RPN (its ``compute_loss``, with
torchvision's sampler and box coder) and ROI loss recompute them from the same inputs, without
importing Detectron2. The fixture's RPN labels are already sampled (at most 128 positives and
256 labelled anchors per image), so torchvision's sampler takes every labelled anchor and both
sides sum over the same set. Class layout: Detectron2's background is class K with no deltas,
torchvision's is class 0 with 4 deltas, so the test moves the background score to the front and
gives the background deltas values that no loss may read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from kdlab.errors import UserError
from kdlab.models import build_model
from kdlab.tasks import build_task
from kdlab.tasks.detection.models.detector_losses import (
    Detectron2LossRPN,
    detectron2_fastrcnn_loss,
)
from support.detection import error_report, scenes

FIXTURE = (Path(__file__).resolve().parents[2] / "fixtures" / "parity_detectron2"
           / "losses.json")
RTOL = 1e-12
SMALL = {"fpn_channels": 16, "box_head_dim": 32}
#: the largest relative difference per loss (printed with ``pytest -s``)
ERRORS: dict[str, float] = {}


report_errors = error_report(ERRORS)


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def _detector(losses: str = "detectron2", seed: int = 0, in_channels: int = 3):
    torch.manual_seed(seed)
    return build_model("fasterrcnn_resnet18_fpn", num_classes=3, in_channels=in_channels,
                       input_size=64, options={**SMALL, "losses": losses})


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _rpn_inputs(rpn: RegionProposalNetwork, r: dict):
    """``compute_loss``'s arguments as torchvision's RPN forward builds them: predictions
    image-major then level-major, float labels, targets encoded by the RPN's box coder."""
    anchors = _t(r["anchors"])
    objectness = _t(r["objectness_logits"]).reshape(-1, 1)
    deltas = _t(r["anchor_deltas"]).reshape(-1, 4)
    labels = [_t(lab) for lab in r["gt_labels"]]
    targets = rpn.box_coder.encode([_t(g) for g in r["gt_boxes"]], [anchors] * len(labels))
    return objectness, deltas, labels, list(targets)


def _roi_inputs(roi_heads, o: dict, k: int):
    """Detectron2's ROI predictions and matches in torchvision's class layout."""
    scores, d2_deltas = _t(o["scores"]), _t(o["proposal_deltas"])
    logits = torch.cat([scores[:, k:], scores[:, :k]], dim=1)
    background = torch.full((len(scores), 4), 1e3, dtype=torch.float64)  # read by no loss
    deltas = torch.cat([background, d2_deltas], dim=1)
    labels = [torch.tensor([0 if c == k else c + 1 for c in cls]) for cls in o["gt_classes"]]
    targets = roi_heads.box_coder.encode([_t(g) for g in o["gt_boxes"]],
                                         [_t(p) for p in o["proposal_boxes"]])
    return logits, deltas, labels, list(targets)


def _check(got: torch.Tensor, want: float, name: str) -> None:
    err = abs(got.item() - want) / abs(want)
    ERRORS[name] = err
    assert got.dtype == torch.float64
    assert err < RTOL, f"{name}: {got.item()!r} vs Detectron2's {want!r} ({err:.1e})"


def test_the_fixture_ran_detectron2s_default_loss_settings(fixture):
    assert fixture["detectron2_commit"].startswith("d1e04565")
    assert fixture["settings"] == {
        "RPN.SMOOTH_L1_BETA": 0.0, "RPN.BATCH_SIZE_PER_IMAGE": 256, "RPN.LOSS_WEIGHT": 1.0,
        "RPN.BBOX_REG_LOSS_WEIGHT": 1.0, "RPN.BBOX_REG_LOSS_TYPE": "smooth_l1",
        "ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0, "ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT": 1.0,
        "ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "smooth_l1"}


def test_the_rpn_losses_are_detectron2s(fixture):
    rpn = _detector().net.rpn
    assert isinstance(rpn, Detectron2LossRPN)
    objectness_loss, box_loss = rpn.compute_loss(*_rpn_inputs(rpn, fixture["inputs"]["rpn"]))
    _check(objectness_loss, fixture["losses"]["loss_rpn_cls"], "loss_rpn_cls")
    _check(box_loss, fixture["losses"]["loss_rpn_loc"], "loss_rpn_loc")
    # the fixture's float64 BCE (see its doc) is Detectron2's float32 one, more precisely
    assert objectness_loss.item() == pytest.approx(fixture["loss_rpn_cls_float32"], rel=1e-6)


def test_the_roi_losses_are_detectron2s(fixture):
    roi_heads = _detector().net.roi_heads
    k = fixture["num_classes"]
    cls_loss, box_loss = detectron2_fastrcnn_loss(
        *_roi_inputs(roi_heads, fixture["inputs"]["roi"], k))
    _check(cls_loss, fixture["losses"]["loss_cls"], "loss_cls")
    _check(box_loss, fixture["losses"]["loss_box_reg"], "loss_box_reg")


def test_the_losses_are_l1_sums_over_the_documented_divisors(fixture):
    """The formulas written out: RPN sums over the sampled anchors / (256 x images); ROI box
    loss sums |delta - target| over the foreground ROIs / every ROI."""
    rpn = _detector().net.rpn
    objectness, deltas, labels, targets = _rpn_inputs(rpn, fixture["inputs"]["rpn"])
    lab, tgt, logit = torch.cat(labels), torch.cat(targets), objectness.flatten()
    n = 256 * len(labels)
    pos, seen = lab == 1, lab >= 0
    bce = -(lab * F.logsigmoid(logit) + (1 - lab) * F.logsigmoid(-logit))[seen].sum()
    assert rpn.compute_loss(objectness, deltas, labels, targets)[0].item() == pytest.approx(
        bce.item() / n, rel=RTOL)
    assert fixture["losses"]["loss_rpn_loc"] == pytest.approx(
        (deltas[pos] - tgt[pos]).abs().sum().item() / n, rel=RTOL)
    logits, box_deltas, roi_labels, roi_targets = _roi_inputs(
        _detector().net.roi_heads, fixture["inputs"]["roi"], fixture["num_classes"])
    lab, tgt = torch.cat(roi_labels), torch.cat(roi_targets)
    total = sum(
        (box_deltas[i, 4 * c:4 * c + 4] - tgt[i]).abs().sum() for i, c in enumerate(lab.tolist())
        if c > 0)
    assert fixture["losses"]["loss_box_reg"] == pytest.approx(total.item() / len(lab), rel=RTOL)


def test_the_default_losses_are_torchvisions(fixture):
    """Default: the RPN is torchvision's own class and a training pass equals torchvision's
    forward bit for bit; Detectron2's losses differ from torchvision's on the same inputs."""
    det, d2 = _detector("torchvision"), _detector("detectron2")
    assert type(det.net.rpn) is RegionProposalNetwork and det.losses == "torchvision"
    images, boxes = _three_channel_scenes()
    det.train()
    torch.manual_seed(3)
    ours = det.features(images, boxes).losses
    torch.manual_seed(3)
    ref = det.net(list(images), boxes)
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k
    d2.load_state_dict(det.state_dict())
    d2.train()
    torch.manual_seed(3)
    theirs = d2.features(images, boxes).losses
    assert set(theirs) == set(ours)
    for k in ("loss_box_reg", "loss_rpn_box_reg"):  # L1, not smooth L1
        assert theirs[k].item() != pytest.approx(ours[k].item(), rel=1e-3), k
    # the same classifier loss; and the same objectness loss here, where each image has 256
    # labelled anchors to sample (Detectron2's divisor is then torchvision's count)
    torch.testing.assert_close(theirs["loss_classifier"], ours["loss_classifier"])
    torch.testing.assert_close(theirs["loss_objectness"], ours["loss_objectness"])
    tv_box = fastrcnn_loss(*_roi_inputs(det.net.roi_heads, fixture["inputs"]["roi"],
                                        fixture["num_classes"]))[1]
    assert tv_box.item() != pytest.approx(fixture["losses"]["loss_box_reg"], rel=1e-3)


def _three_channel_scenes():
    images, targets = scenes()
    return images.expand(-1, 3, -1, -1).contiguous(), targets


def test_a_detector_with_detectron2_losses_trains():
    """Two SGD steps on synthetic scenes: finite losses, the weights move, and ``forward``
    with targets returns the same losses as ``features``."""
    task = build_task("detection")
    det = _detector(in_channels=1).train()
    images, targets = scenes()
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.01)
    before = det.net.rpn.head.conv[0][0].weight.detach().clone()
    for _ in range(2):
        out = task.features(det, images, targets)
        assert set(out.losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                   "loss_rpn_box_reg"}
        loss = task.loss(out, targets)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(before, det.net.rpn.head.conv[0][0].weight)
    torch.manual_seed(7)
    via_forward = det(images, targets)
    torch.manual_seed(7)
    via_features = det.features(images, targets).losses
    for k, v in via_features.items():
        assert torch.equal(via_forward[k], v), k


def test_weights_and_state_dict_are_the_default_detectors():
    det, d2 = _detector("torchvision"), _detector("detectron2")
    assert det.net.state_dict().keys() == d2.net.state_dict().keys()
    for k, v in det.net.state_dict().items():
        assert torch.equal(v, d2.net.state_dict()[k]), k
    d2.eval()
    det.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = det(x)[0], d2(x)[0]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kdlab_export_round_trips_and_the_deployed_graph_is_the_detector(tmp_path):
    """The exported file (state_dict + builder options) loads back strictly into a detector
    with the same option; ``torch.export`` captures its eval graph with the same detections."""
    from kdlab.tasks.detection.deploy import OneImageDetector, traceable_torchvision
    from kdlab.tools.export import load_exported
    from kdlab.training.exported_file import export_metadata, write_exported

    det = _detector().eval()
    path = tmp_path / "student.safetensors"
    write_exported(det.net, export_metadata(det.net, "student", None, None), path)
    loaded = load_exported(path)
    assert isinstance(loaded.rpn, Detectron2LossRPN)
    x = torch.rand(1, 3, 64, 64)
    want = OneImageDetector(det.net)(x)
    with torch.no_grad():
        for a, b in zip(OneImageDetector(loaded)(x), want, strict=True):
            assert torch.equal(a, b)
        with traceable_torchvision():
            graph = torch.export.export(OneImageDetector(det.net), (x,), strict=False)
        for a, b in zip(graph.module()(x), want, strict=True):
            assert torch.equal(a, b)


def test_an_unknown_loss_style_is_a_user_error():
    with pytest.raises(UserError, match="losses='mmdet' is not one of torchvision, detectron2"):
        _detector("mmdet")

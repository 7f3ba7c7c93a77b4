"""Detection models: the Detector wrapper, the ROI-head lens, builders, weights, inheriting."""

from __future__ import annotations

import pytest
import torch
import torchvision

from kdlab.errors import UserError
from kdlab.models import MODELS, build_model, model_task
from kdlab.tasks.detection.models import Detector, inherit_from, roi_lens
from support.detection import CLASSES, SIZE, scenes, tiny, tiny_pair

DETECTORS = [n for n in MODELS.names() if model_task(n) == "detection"]


def test_the_detection_zoo_is_registered():
    assert {"fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
            "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet50_fpn_v2",
            "fasterrcnn_mobilenet_v2_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
            "frcnn_tiny_r18", "frcnn_tiny_r10", "frcnn_tiny_r10_slim"} <= set(DETECTORS)


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_detects_in_eval_mode(name):
    channels = 1 if name.startswith("frcnn_tiny") else 3
    det = build_model(name, num_classes=CLASSES, in_channels=channels, input_size=SIZE)
    assert isinstance(det, Detector)
    assert isinstance(det.net, torchvision.models.detection.FasterRCNN)
    assert det.num_classes == CLASSES and det.net.kdlab_spec["model"] == name
    assert set(det.roi_levels) <= set(det.fpn_levels)
    det.eval()
    with torch.no_grad():
        out = det(torch.randn(1, channels, SIZE, SIZE))
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_the_training_pass_is_torchvisions():
    """features() returns the losses torchvision's own forward computes (same sampling)."""
    det = tiny().train()
    x, targets = scenes()
    torch.manual_seed(5)
    out = det.features(x, targets)
    torch.manual_seed(5)
    ref = det.net(list(x), targets)
    assert set(out.losses) == set(ref)
    for k in ref:
        torch.testing.assert_close(out.losses[k], ref[k])
    n = sum(len(p) for p in out.proposals)
    assert out.logits.shape == (n, CLASSES + 1) and out.box_deltas.shape == (n, 4 * (CLASSES + 1))
    assert sum(len(lab) for lab in out.labels) == n
    assert list(out.fpn) == det.fpn_levels and out.images.shape == (2, 1, SIZE, SIZE)
    assert out.image_sizes == [(SIZE, SIZE)] * 2


def test_crowd_and_empty_boxes_are_not_trained_on():
    det = tiny().train()
    x, targets = scenes(batch=1)
    noisy = [{"boxes": torch.cat([targets[0]["boxes"], torch.tensor([[5.0, 5, 30, 30],
                                                                     [9.0, 9, 9, 20]])]),
              "labels": torch.cat([targets[0]["labels"], torch.tensor([1, 2])]),
              "iscrowd": torch.tensor([0] * len(targets[0]["labels"]) + [1, 0])}]
    torch.manual_seed(1)
    a = det.features(x, noisy).losses
    torch.manual_seed(1)
    b = det.features(x, targets).losses
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_the_lens_is_the_roi_head_of_the_detector():
    """Post-processed lens outputs equal torchvision's ROI-head detections."""
    det = tiny().eval()
    x, _ = scenes()
    with torch.no_grad():
        images, _ = det.net.transform(list(x))
        fpn = det.net.backbone(images.tensors)
        proposals, _ = det.net.rpn(images, fpn)
        ref, _ = det.net.roi_heads(fpn, proposals, images.image_sizes)
        logits, deltas = roi_lens(det.roi_heads, fpn, proposals, images.image_sizes)
        boxes, scores, labels = det.roi_heads.postprocess_detections(
            logits, deltas, proposals, images.image_sizes)
    for r, b, s, lab in zip(ref, boxes, scores, labels, strict=True):
        torch.testing.assert_close(r["boxes"], b)
        torch.testing.assert_close(r["scores"], s)
        assert torch.equal(r["labels"], lab)


def test_whole_detector_weights_load_from_a_local_file(tmp_path):
    src = tiny(seed=3)
    path = tmp_path / "det.pth"
    torch.save(src.net.state_dict(), path)
    same = build_model("frcnn_tiny_r10", num_classes=CLASSES, in_channels=1, input_size=SIZE,
                       pretrained=str(path))
    for k, v in src.net.state_dict().items():
        torch.testing.assert_close(same.net.state_dict()[k], v)
    other = build_model("frcnn_tiny_r10", num_classes=CLASSES + 2, in_channels=1,
                        input_size=SIZE, pretrained=str(path))
    assert set(other.net.kdlab_pretrained_skipped) == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}


def test_imagenet_backbone_weights_load_into_the_body(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    det = build_model("fasterrcnn_resnet18_fpn", num_classes=2, input_size=SIZE,
                      pretrained=str(path))
    body = det.net.backbone.body
    torch.testing.assert_close(body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    torch.testing.assert_close(body.bn1.running_var, resnet.bn1.running_var)
    assert not body.layer1[0].conv1.weight.requires_grad  # stem + layer1 frozen (FREEZE_AT 2)
    assert body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(UserError, match="local file"):
        build_model("fasterrcnn_resnet18_fpn", num_classes=2, pretrained=True)
    with pytest.raises(UserError, match="does not exist"):
        build_model("fasterrcnn_resnet18_fpn", num_classes=2, pretrained=str(tmp_path / "x"))


def test_inheriting_copies_fpn_rpn_and_roi_heads_only():
    teacher, student = tiny_pair(student="frcnn_tiny_r10")
    body_before = {k: v.clone() for k, v in student.net.backbone.body.state_dict().items()}
    names = inherit_from(student, teacher)
    assert names and all(n.startswith(("backbone.fpn.", "rpn.", "roi_heads.")) for n in names)
    t_state, s_state = teacher.net.state_dict(), student.net.state_dict()
    for n in names:
        torch.testing.assert_close(s_state[n], t_state[n])
    for k, v in student.net.backbone.body.state_dict().items():
        torch.testing.assert_close(v, body_before[k])


def test_inheriting_between_different_shapes_is_a_user_error_and_changes_nothing():
    teacher, student = tiny_pair(student="frcnn_tiny_r10_slim")
    before = {k: v.clone() for k, v in student.net.state_dict().items()}
    with pytest.raises(UserError, match="inheriting strategy"):
        inherit_from(student, teacher)
    for k, v in student.net.state_dict().items():
        assert torch.equal(v, before[k])

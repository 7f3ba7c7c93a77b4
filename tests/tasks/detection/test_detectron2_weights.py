"""Detectron2 ``.pkl`` files: Caffe2 names, the box predictor's layout, the COCO class map,
strict loading with one-sentence errors; the pixel format a teacher is handed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.errors import UserError
from kdlab.models import build_model
from kdlab.tasks.detection.models.detectron2_parts import D2AnchorGenerator, d2_cell_anchors
from kdlab.tasks.detection.models.detectron2_weights import (
    COCO_CATEGORY_IDS,
    caffe2_to_d2,
    load_detectron2_weights,
    predictor_tensors,
    torchvision_key,
)
from kdlab.tasks.detection.models.pixel_format import PixelFormat, convert_batch

FIXTURE = (Path(__file__).resolve().parents[2] / "fixtures" / "parity_detectron2"
           / "faster_rcnn_r50_fpn.json")
SMALL = {"width_per_group": 8, "fpn_channels": 16, "box_head_dim": 32, "stride_in_1x1": True}


def _write(path: Path, data: object) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


@pytest.fixture(scope="module")
def zoo_weights() -> dict[str, np.ndarray]:
    """Detectron2-named weights of the small R-50-FPN (the parity fixture's names)."""
    shapes = json.loads(FIXTURE.read_text())["shapes"]
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s) * 0.1 for k, s in shapes.items()}


def _small(num_classes: int = 3):
    return build_model("fasterrcnn_resnet50_fpn", num_classes=num_classes, input_size=64,
                       options=SMALL)


def test_caffe2_names() -> None:
    blobs = {n: np.zeros(1) for n in ("conv1_w", "res_conv1_bn_s", "res_conv1_bn_b",
                                      "res2_0_branch2a_w", "res2_0_branch2a_bn_s",
                                      "res5_2_branch2c_bn_b", "res3_0_branch1_w",
                                      "res3_0_branch1_bn_s", "fc1000_w", "fc1000_b")}
    assert sorted(caffe2_to_d2(blobs)) == sorted([
        "stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.bias",
        "res2.0.conv1.weight", "res2.0.conv1.norm.weight", "res5.2.conv3.norm.bias",
        "res3.0.shortcut.weight", "res3.0.shortcut.norm.weight"])
    with pytest.raises(UserError, match="not an MSRA ResNet's"):
        caffe2_to_d2({"conv5_mask_w": np.zeros(1)})


@pytest.mark.parametrize(("d2", "whole", "tv"), [
    ("backbone.bottom_up.stem.conv1.norm.running_var", True, "backbone.body.bn1.running_var"),
    ("backbone.bottom_up.res4.5.conv2.norm.weight", True, "backbone.body.layer3.5.bn2.weight"),
    ("backbone.bottom_up.res2.0.shortcut.norm.bias", True,
     "backbone.body.layer1.0.downsample.1.bias"),
    ("res5.0.shortcut.weight", False, "backbone.body.layer4.0.downsample.0.weight"),
    ("backbone.fpn_lateral3.weight", True, "backbone.fpn.inner_blocks.1.0.weight"),
    ("backbone.fpn_output5.bias", True, "backbone.fpn.layer_blocks.3.0.bias"),
    ("proposal_generator.rpn_head.conv.weight", True, "rpn.head.conv.0.0.weight"),
    ("proposal_generator.rpn_head.anchor_deltas.bias", True, "rpn.head.bbox_pred.bias"),
    ("roi_heads.box_head.fc2.weight", True, "roi_heads.box_head.fc7.weight"),
    ("roi_heads.mask_head.mask_fcn1.weight", True, None),
])
def test_names(d2: str, whole: bool, tv: str | None) -> None:
    assert torchvision_key(d2, whole) == tv


def test_predictor_layout() -> None:
    k, d = 3, 5
    w, b = torch.randn(k + 1, d), torch.randn(k + 1)
    bw, bb = torch.randn(4 * k, d), torch.randn(4 * k)
    out = predictor_tensors({"cls_score.weight": w, "cls_score.bias": b,
                             "bbox_pred.weight": bw, "bbox_pred.bias": bb}, k)
    assert torch.equal(out["cls_score.weight"][0], w[-1])  # background first
    assert torch.equal(out["cls_score.weight"][1:], w[:-1])
    assert torch.equal(out["bbox_pred.weight"][4:], bw)
    assert torch.equal(out["bbox_pred.bias"][:4], torch.zeros(4))


def test_coco_class_map() -> None:
    k, d = 80, 2
    w, b = torch.randn(k + 1, d), torch.randn(k + 1)
    bw, bb = torch.randn(4 * k, d), torch.randn(4 * k)
    out = predictor_tensors({"cls_score.weight": w, "cls_score.bias": b,
                             "bbox_pred.weight": bw, "bbox_pred.bias": bb}, 90)
    assert torch.equal(out["cls_score.weight"][90], w[79])  # toothbrush: id 90, d2 class 79
    assert torch.equal(out["bbox_pred.weight"][4 * 13:4 * 14], bw[4 * 11:4 * 12])  # id 13
    probs = torch.softmax(torch.randn(7, d) @ out["cls_score.weight"].T
                          + out["cls_score.bias"], dim=1)
    assert probs[:, 12].max() == 0 and len(COCO_CATEGORY_IDS) == 80
    with pytest.raises(UserError, match="has 80 classes but kdlab's has 20"):
        predictor_tensors({"cls_score.weight": w, "cls_score.bias": b,
                           "bbox_pred.weight": bw, "bbox_pred.bias": bb}, 20)


def test_pretrained_pkl_through_the_builder(zoo_weights, tmp_path: Path) -> None:
    path = _write(tmp_path / "model_final.pkl", {"model": zoo_weights, "__author__": "t"})
    det = build_model("fasterrcnn_resnet50_fpn", num_classes=3, input_size=64,
                      options=SMALL, pretrained=str(path))
    assert det.net.kdlab_pretrained_skipped == []
    fc = det.net.state_dict()["roi_heads.box_head.fc6.weight"]
    assert np.allclose(fc.numpy(), zoo_weights["roi_heads.box_head.fc1.weight"])


@pytest.mark.parametrize(("change", "message"), [
    ("drop", "is missing"), ("shape", "has another shape"), ("unknown", "are not part of")])
def test_strict_errors_load_nothing(zoo_weights, tmp_path: Path, change: str,
                                    message: str) -> None:
    weights = dict(zoo_weights)
    key = "backbone.bottom_up.res3.1.conv2.weight"
    if change == "drop":
        del weights[key]
    elif change == "shape":
        weights[key] = np.zeros((1, 2, 3, 3))
    else:
        weights["roi_heads.mask_head.predictor.weight"] = np.zeros(2)
    path = _write(tmp_path / "bad.pkl", {"model": weights, "__author__": "t"})
    det = _small()
    before = {k: v.clone() for k, v in det.net.state_dict().items()}
    with pytest.raises(UserError, match=message):
        load_detectron2_weights(det.net, path)
    assert all(torch.equal(before[k], v) for k, v in det.net.state_dict().items())


def test_depth_mismatch_says_what_to_do(zoo_weights, tmp_path: Path) -> None:
    path = _write(tmp_path / "r50.pkl", {"model": zoo_weights, "__author__": "t"})
    det = build_model("fasterrcnn_resnet101_fpn", num_classes=3, input_size=64, options=SMALL)
    with pytest.raises(UserError, match="build the detector the file was trained as"):
        load_detectron2_weights(det.net, path)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_unsafe_or_unreadable_files(tmp_path: Path) -> None:
    det = _small()
    with pytest.raises(UserError, match="not a readable Detectron2 weight file"):
        load_detectron2_weights(det.net, _write(tmp_path / "evil.pkl", {"x": Evil()}))
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable"):
        load_detectron2_weights(det.net, tmp_path / "junk.pkl")
    with pytest.raises(UserError, match="Detectron1"):
        load_detectron2_weights(det.net, _write(tmp_path / "d1.pkl", {"blobs": {}}))


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="input_format"):
        build_model("fasterrcnn_resnet50_fpn", num_classes=3, options={"input_format": "yuv"})
    with pytest.raises(UserError, match="stride_in_1x1 is for"):
        build_model("fasterrcnn_resnet18_fpn", num_classes=3, options={"stride_in_1x1": True})
    with pytest.raises(UserError, match="pixel_mean needs 3"):
        build_model("fasterrcnn_resnet18_fpn", num_classes=3, options={"pixel_mean": [1.0]})


def test_default_options_keep_torchvision() -> None:
    """Defaults unchanged: torchvision's rounded anchors, aligned=False pooler, 3x3 stride."""
    det = build_model("fasterrcnn_resnet50_fpn", num_classes=3)
    assert type(det.net.rpn.anchor_generator).__name__ == "AnchorGenerator"
    assert type(det.net.roi_heads.box_roi_pool).__name__ == "MultiScaleRoIAlign"
    assert det.net.backbone.body.layer2[0].conv2.stride == (2, 2)
    assert det.pixel_format == PixelFormat(False, (0.0,) * 3, (1.0,) * 3)


def test_d2_anchors_are_not_rounded() -> None:
    cell = d2_cell_anchors((32,), (0.5, 1.0, 2.0))
    assert cell[0, 2].item() == pytest.approx(22.627417, abs=1e-5)  # torchvision: 23
    gen = D2AnchorGenerator(((32,), (64,)), ((1.0,),) * 2, (4, 64))
    from torchvision.models.detection.image_list import ImageList

    maps = [torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 2)]
    anchors = gen(ImageList(torch.zeros(1, 3, 12, 96), [(12, 96)]), maps)[0]
    assert anchors[-1].tolist() == [64 - 32, -32, 64 + 32, 32]  # the level's stride, not 96/2


def test_teacher_gets_its_own_pixel_format() -> None:
    student = PixelFormat(False, (103.53, 116.28, 123.675), (57.375, 57.12, 58.395))
    teacher = PixelFormat(True, (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))
    raw = torch.rand(2, 3, 8, 8) * 255
    batch = torch.zeros(2, 3, 8, 8)
    sizes = [(8, 8), (5, 6)]
    for i, (h, w) in enumerate(sizes):
        batch[i, :, :h, :w] = student.apply(raw[i, :, :h, :w])
    out = convert_batch(batch, sizes, student, teacher)
    assert torch.allclose(out[1, :, :5, :6], teacher.apply(raw[1, :, :5, :6]), atol=1e-4)
    assert out[1, :, 5:].abs().max() == 0 and out[1, :, :, 6:].abs().max() == 0
    assert convert_batch(batch, sizes, student, student) is batch


def test_teacher_input_equals_its_own_transform() -> None:
    """A teacher reading BGR minus the mean gets, from an RGB-with-std student's batch, what
    its own transform makes of the raw image (padding included)."""
    s_opts = {"pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [57.375, 57.12, 58.395]}
    t_opts = {"input_format": "bgr", "pixel_mean": [123.675, 116.28, 103.53]}
    student = build_model("fasterrcnn_resnet18_fpn", num_classes=3, input_size=64,
                          options=s_opts).eval()
    teacher = build_model("fasterrcnn_resnet18_fpn", num_classes=3, input_size=64,
                          options=t_opts).eval()
    raw = [torch.rand(3, 64, 80) * 255, torch.rand(3, 48, 64) * 255]
    s_list, _ = student.net.transform(raw)
    t_list, _ = teacher.net.transform(raw)
    got = teacher.input_from(student, s_list.tensors, s_list.image_sizes)
    assert torch.allclose(got, t_list.tensors, atol=1e-3)
    assert student.normalises_itself and teacher.normalises_itself


def test_mobilenet_v2_fpn_taps_the_authors_blocks() -> None:
    """fpn_taps: last reads the last block of each stride (24/32/96/320 channels), as the
    FCFD / ReviewKD authors' MobileNetV2 FPN; the default keeps torchvision's first blocks."""
    det = build_model("fasterrcnn_mobilenet_v2_fpn", num_classes=3, input_size=64,
                      options={"fpn_taps": "last"}).eval()
    inner = det.net.backbone.fpn.inner_blocks
    assert [b[0].in_channels for b in inner] == [24, 32, 96, 320]
    with torch.no_grad():
        body = det.net.backbone.body(torch.zeros(1, 3, 64, 64))
    assert [tuple(v.shape[1:]) for v in body.values()] == [(24, 16, 16), (32, 8, 8),
                                                           (96, 4, 4), (320, 2, 2)]
    default = build_model("fasterrcnn_mobilenet_v2_fpn", num_classes=3, input_size=64)
    assert [b[0].in_channels for b in default.net.backbone.fpn.inner_blocks] == [24, 32, 64,
                                                                               160]
    with pytest.raises(UserError, match="fpn_taps"):
        build_model("fasterrcnn_mobilenet_v2_fpn", num_classes=3, options={"fpn_taps": "mid"})


def test_msra_weights_need_the_msra_bottleneck(tmp_path: Path) -> None:
    """An MSRA (Caffe2) file into a ResNet that downsamples in the 3x3 is refused."""
    shapes = json.loads(FIXTURE.read_text())["msra"]["blob_shapes"]
    blobs = {k: np.zeros(s) for k, s in shapes.items()}
    path = _write(tmp_path / "R-50.pkl", blobs)
    torchvision_layout = build_model("fasterrcnn_resnet50_fpn", num_classes=3, input_size=64,
                                     options={**SMALL, "stride_in_1x1": False})
    with pytest.raises(UserError, match="stride_in_1x1: true"):
        load_detectron2_weights(torchvision_layout.net, path)
    assert load_detectron2_weights(_small().net, path)  # MSRA layout: loads, heads fresh

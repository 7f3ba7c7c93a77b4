"""kdlab's Faster R-CNN R-50-FPN with Detectron2's options, loaded from a Detectron2 ``.pkl``,
computes what Detectron2 v0.6 computes with that file, stage by stage.

The fixture (``benchmarks/parity/detectron2_weights_fixture.py``) ran Detectron2's own model
(``build_model`` from ``configs/Base-RCNN-FPN.yaml`` at small widths, weights loaded by its
``DetectionCheckpointer``) on seeded weights; here the same weights are drawn again from the
fixture's names, shapes and seed (no Detectron2 import), written as a model-zoo ``.pkl``, read
by :mod:`kdlab.tasks.detection.models.detectron2_weights` and run through kdlab's detector, in
float64. Tolerance: 1e-9 relative to each stage's largest value (the two sides run the same
operators in another order - e.g. FrozenBatchNorm fused by Detectron2, as scale and shift by
torchvision - so they differ by float64 rounding; a wrong name, layout, stride or half-pixel
shift moves values by 1e-3 or more). Boxes after the anchors (proposals, detections) and the
detection scores: 1e-6, float32's precision, because Detectron2 keeps every box in a float32
``Boxes`` (``structures/boxes.py``) even in a float64 model, where kdlab's stay float64.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import detectron2_weights_setup as S  # noqa: E402

from kdlab.models import build_model  # noqa: E402
from kdlab.tasks.detection.models.detector import roi_lens  # noqa: E402
from kdlab.tasks.detection.models.detectron2_weights import load_detectron2_weights  # noqa: E402
from support.detection import error_report  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "parity_detectron2" / "faster_rcnn_r50_fpn.json"
RTOL = 1e-9
RTOL_BOXES = 1e-6  # Detectron2's float32 Boxes (see the module doc)
#: kdlab's options for the fixture's Detectron2 configuration
D2_OPTIONS = {"input_format": "bgr", "pixel_mean": [103.530, 116.280, 123.675],
              "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": True, "anchors": "detectron2",
              "box_pooler": "roialignv2", "width_per_group": 8, "fpn_channels": 16,
              "box_head_dim": 32}


#: the largest relative difference per stage (printed with ``pytest -s``)
ERRORS: dict[str, float] = {}


report_errors = error_report(ERRORS)


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def check(got: torch.Tensor, want: dict, what: str, rtol: float = RTOL) -> float:
    """``got`` against a fixture digest within ``rtol`` of the stage's largest value; returns
    the largest difference relative to it."""
    flat = got.detach().double().reshape(-1).numpy()
    assert list(got.shape) == want["shape"], what
    idx = want.get("index", range(flat.size))
    ref = np.asarray(want["values"])
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    err = float(np.abs(flat[list(idx)] - ref).max(initial=0.0)) / scale
    assert err <= rtol, f"{what}: {err:.3g}"
    if "sum" in want:
        assert abs(flat.sum() - want["sum"]) <= rtol * max(abs(want["abs_sum"]), 1.0), what
        assert abs(np.abs(flat).sum() - want["abs_sum"]) <= rtol * want["abs_sum"], what
    ERRORS[what] = err
    return err


def _detector(fixture: dict, tmp_path: Path, options: dict | None = None):
    weights = S.draw_weights(fixture["shapes"], fixture["seed"])
    path = tmp_path / "model_final_test.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)
    det = build_model("fasterrcnn_resnet50_fpn", num_classes=fixture["num_classes"],
                      input_size=64, options=options or D2_OPTIONS)
    det.double().eval()
    assert load_detectron2_weights(det.net, path) == []
    return det


def test_stages_equal_detectron2(fixture: dict, tmp_path: Path) -> None:
    det = _detector(fixture, tmp_path)
    net = det.net
    image = torch.from_numpy(S.draw_image(fixture["seed"]))
    with torch.no_grad():
        images, _ = net.transform([image])
        assert tuple(images.image_sizes[0]) == tuple(fixture["image_size"])  # no resize
        check(images.tensors, fixture["stages"]["input"], "input")
        body = net.backbone.body(images.tensors)
        for i, name in enumerate(("res2", "res3", "res4", "res5")):
            check(body[str(i)], fixture["stages"][name], name)
        fpn = net.backbone(images.tensors)
        for key, name in zip(fpn, ("p2", "p3", "p4", "p5", "p6"), strict=True):
            check(fpn[key], fixture["stages"][name], name)
        logits, deltas = net.rpn.head(list(fpn.values()))
        for i in range(5):
            check(logits[i], fixture["stages"][f"rpn_objectness_{i}"], f"objectness {i}")
            check(deltas[i], fixture["stages"][f"rpn_deltas_{i}"], f"rpn deltas {i}")
        anchors = net.rpn.anchor_generator(images, list(fpn.values()))[0]
        check(anchors, fixture["stages"]["anchors"], "anchors")
        proposals, _ = net.rpn(images, fpn)
        check(proposals[0], fixture["stages"]["proposals"], "proposals", RTOL_BOXES)
        boxes = torch.tensor(fixture["fixed_boxes"], dtype=torch.float64)
        cls, box = roi_lens(net.roi_heads, fpn, [boxes], images.image_sizes)
        k = fixture["num_classes"]
        check(torch.cat([cls[:, 1:], cls[:, :1]], dim=1), fixture["stages"]["box_scores"],
              "box scores (background last)")
        check(box[:, 4:], fixture["stages"]["box_deltas"], "box deltas (object classes)")
        assert torch.equal(box[:, :4], torch.zeros_like(box[:, :4]))
        assert cls.shape[1] == k + 1


def test_detections_equal_detectron2(fixture: dict, tmp_path: Path) -> None:
    det = _detector(fixture, tmp_path)
    with torch.no_grad():
        out = det([torch.from_numpy(S.draw_image(fixture["seed"]))])[0]
    want = fixture["stages"]["detections"]
    check(out["boxes"], want["boxes"], "detection boxes", RTOL_BOXES)
    check(out["scores"], want["scores"], "detection scores", RTOL_BOXES)
    assert (out["labels"] - 1).tolist() == want["classes"]  # torchvision: 0 = background


def test_torchvision_options_differ(fixture: dict, tmp_path: Path) -> None:
    """The test can fail: without Detectron2's bottleneck stride the same weights compute
    another backbone (a check of the check)."""
    options = {**D2_OPTIONS, "stride_in_1x1": False}
    det = _detector(fixture, tmp_path, options)
    image = torch.from_numpy(S.draw_image(fixture["seed"]))
    with torch.no_grad():
        images, _ = det.net.transform([image])
        res3 = det.net.backbone.body(images.tensors)["1"]
    with pytest.raises(AssertionError):
        check(res3, fixture["stages"]["res3"], "res3")


def test_msra_caffe2_backbone_equals_detectron2(fixture: dict, tmp_path: Path) -> None:
    """The MSRA blob names (Detectron2's Caffe2 path) load into the same ResNet."""
    msra = fixture["msra"]
    blobs = S.draw_weights(msra["blob_shapes"], msra["seed"])
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    det = build_model("fasterrcnn_resnet50_fpn", num_classes=fixture["num_classes"],
                      input_size=64, options=D2_OPTIONS)
    det.double().eval()
    fresh = load_detectron2_weights(det.net, path)
    assert fresh and all(not k.startswith("backbone.body.") for k in fresh)
    image = torch.from_numpy(S.draw_image(fixture["seed"]))
    with torch.no_grad():
        images, _ = det.net.transform([image])
        body = det.net.backbone.body(images.tensors)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        check(body[str(i)], msra["stages"][name], f"MSRA {name}")

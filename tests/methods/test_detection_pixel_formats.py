"""Detection distillation between detectors that normalise raw pixels themselves, each in its
own format (the FCFD authors' R-18 student reads RGB with a std, their teachers BGR minus the
mean): the teacher sees the student's batch in its own format, and FCFD trains."""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.detection_base import teacher_roi
from kdlab.models import build_model
from kdlab.tasks import build_task
from support.detection import scenes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import detectron2_weights_setup as S  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "parity_detectron2" / "faster_rcnn_r50_fpn.json"
SMALL = {"width_per_group": 8, "fpn_channels": 16, "box_head_dim": 32, "stride_in_1x1": True,
         "anchors": "detectron2", "box_pooler": "roialignv2"}
TEACHER = {**SMALL, "input_format": "bgr", "pixel_mean": [103.53, 116.28, 123.675]}
STUDENT = {**SMALL, "pixel_mean": [123.675, 116.28, 103.53],
           "pixel_std": [58.395, 57.12, 57.375]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The parity fixture's seeded Detectron2 weights (3 classes) as a model-zoo .pkl."""
    shapes = json.loads(FIXTURE.read_text())["shapes"]
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": S.draw_weights(shapes, S.SEED), "__author__": "test"}, f)
    return path


def _detector(options: dict, weights: Path):
    return build_model("fasterrcnn_resnet50_fpn", num_classes=3, input_size=64,
                       options=options, pretrained=str(weights))


def _raw_scenes(seed: int):
    """Scenes as raw RGB pixels on 0..255 (what the loader hands such detectors)."""
    x, targets = scenes(seed=seed)
    return (x.clamp(0, 3) * 80).repeat(1, 3, 1, 1), targets


def test_fcfd_trains_with_a_teacher_in_its_own_format(weights: Path) -> None:
    teacher, student = _detector(TEACHER, weights).eval(), _detector(STUDENT, weights)
    d = build_distiller("fcfd", {}, student, teacher, task=build_task("detection")).train()
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):
        x, targets = _raw_scenes(10 + step)
        _, losses = d(x, targets)
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    x, targets = _raw_scenes(3)
    student.eval()  # both at the evaluation size (training draws the shorter side)
    with torch.no_grad():
        out = student.features(x, targets)
    seen = teacher_roi(teacher, out, roi=False).fpn
    with torch.no_grad():
        own, _ = teacher.net.transform(list(x))
        want = teacher.backbone(own.tensors)
    for k in want:
        torch.testing.assert_close(seen[k], want[k], atol=1e-3, rtol=1e-4)


def test_a_self_normalising_detector_beside_a_loader_normalised_one_is_refused(weights):
    teacher = _detector(TEACHER, weights).eval()
    student = build_model("fasterrcnn_resnet50_fpn", num_classes=3, input_size=64,
                          options=SMALL, pretrained=str(weights))
    with pytest.raises(UserError, match="set the pixel options on both networks"):
        build_distiller("fcfd", {}, student, teacher, task=build_task("detection"))

"""Detection parity: FGFI's imitation mask and loss and ReviewKD's detection loss against the
numbers their authors' code produced on the same copied features (float64).

The fixtures (``tests/fixtures/parity_detection/*.json``) record the references' outputs, their
repositories and commits, the seeds and the command (``benchmarks/parity/generate_detection.py``);
the inputs and kdlab's modules are rebuilt here from the seeds
(``benchmarks/parity/detection_setup.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from kdlab.methods.fgfi.losses import fgfi_loss
from kdlab.methods.fgfi.mask import batch_masks
from kdlab.methods.reviewkd.abf import review
from kdlab.methods.reviewkd.losses import hcl_loss

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import detection_setup as D  # noqa: E402

RTOL = 1e-10
FIXTURES = {p.stem: json.loads(p.read_text()) for p in sorted(D.FIXTURES.glob("*.json"))}


def test_fixtures_name_their_sources_and_seeds():
    assert set(FIXTURES) == {"fgfi", "reviewkd"}
    for fx in FIXTURES.values():
        assert fx["seeds"] == D.SEEDS and fx["batch"] == D.BATCH and fx["dtype"] == "float64"
        assert "generate_detection.py" in fx["command"]
        ref = fx["reference"]
        assert ref["repository"].startswith("github.com/") and len(ref["commit"]) == 40


def _fgfi_masks(fx: dict) -> list[torch.Tensor]:
    anchors = D.fgfi_anchor_grid(fx["base_anchors"])
    boxes = [torch.tensor(b, dtype=torch.float64) for b in D.FGFI_BOXES]
    (masks,) = batch_masks([anchors], boxes, 0.5, legacy_iou=True, scope="image")
    return masks


def test_fgfi_mask_equals_the_authors_anchor_target_layer():
    fx = FIXTURES["fgfi"]
    masks = _fgfi_masks(fx)
    assert masks.tolist() == [[[bool(v) for v in row] for row in m] for m in fx["masks"]]
    assert [int(m.sum()) for m in masks] == fx["positions"]


def test_fgfi_loss_equals_the_authors_training_loop():
    fx = FIXTURES["fgfi"]
    s, t = D.fgfi_features()
    s.requires_grad_(True)
    adapter = D.fgfi_adapter(relu=True)  # the authors' adaptation ends with a ReLU
    loss = fx["weight"] * fgfi_loss([adapter(s)], [t], [_fgfi_masks(fx)])
    (grad,) = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(fx["loss"], rel=RTOL)
    assert grad.pow(2).sum().item() == pytest.approx(fx["grad_student_sq"], rel=1e-8)


def test_reviewkd_detection_loss_equals_the_authors_kd_trans():
    fx = FIXTURES["reviewkd"]
    s, t = D.review_features()
    for x in s:
        x.requires_grad_(True)
    abfs = D.review_abfs()
    loss = hcl_loss(review(abfs, s, [None] * len(s)), t)
    grads = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(fx["loss"], rel=RTOL)
    for g, want in zip(grads, fx["grad_student_sq"], strict=True):
        assert g.pow(2).sum().item() == pytest.approx(want, rel=1e-8)

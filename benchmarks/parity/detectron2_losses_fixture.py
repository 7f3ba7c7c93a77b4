"""Write the Detectron2 loss parity fixture: Detectron2 v0.6's own ``RPN.losses`` and
``FastRCNNOutputLayers.losses`` on seeded float64 inputs
(``tests/tasks/detection/test_detector_losses.py`` recomputes them with kdlab's
``losses: detectron2``).

Usage (the checkout and dependencies of ``detectron2_weights_fixture.py``)::

    PYTHONPATH=src python benchmarks/parity/detectron2_losses_fixture.py \\
        --detectron2 <detectron2 v0.6 checkout> --fvcore <fvcore sources> \\
        [--out tests/fixtures/parity_detectron2/losses.json]

What runs, unchanged: the RPN and the box predictor of Detectron2's ``build_model`` with
``configs/Base-RCNN-FPN.yaml`` over ``config/defaults.py`` (the configuration of the weight
fixture: every loss setting is Detectron2's default, which the FCFD authors' configs keep -
``SMOOTH_L1_BETA`` 0.0, ``BBOX_REG_LOSS_TYPE`` smooth_l1, loss weights 1.0,
``RPN.BATCH_SIZE_PER_IMAGE`` 256, ``BBOX_REG_WEIGHTS`` (1, 1, 1, 1) for the RPN and (10, 10, 5,
5) for the box head, 3 classes), called inside an ``EventStorage`` (they log statistics).

The inputs, drawn from one ``numpy.random.default_rng(SEED)`` in the order below and stored in
the fixture:

- RPN: 2 images, 2 levels of 48 and 24 anchors. Anchors and matched ground-truth boxes have
  quarter-pixel coordinates; objectness logits normal, deltas normal x 0.5. The labels are
  already sampled, as ``RPN.label_and_sample_anchors`` returns them: per image 20 anchors 1,
  30 anchors 0, the rest -1 (ignored). At most 128 positives and 256 labelled anchors per
  image, so torchvision's ``BalancedPositiveNegativeSampler`` (256 per image, half positive)
  takes every labelled anchor and both sides see the same set; the divisor 256 x 2 differs
  from the 50 x 2 sampled anchors, which is what the test must see.
- ROI head: 2 images of 12 and 8 proposals (quarter-pixel boxes) with matched ground-truth
  boxes and ``gt_classes`` in 0..3 (3 = background, Detectron2's convention: half of them),
  scores ``(20, 4)`` and class-specific deltas ``(20, 12)`` normal.

Two adaptations keep the computation in float64 without changing the function: Detectron2
keeps boxes in float32 ``Boxes`` (``structures/boxes.py``), so the fixture replaces the
tensors of the ``Boxes`` it passes by the float64 ones after construction (every operation on
them is dtype-generic); and ``RPN.losses`` casts its 0/1 labels to float32 before
``binary_cross_entropy_with_logits``, for which torch returns a float32 loss, so
:func:`_float64_bce` gives the RPN module a BCE that casts the targets to the logits' dtype (0
and 1 are exact in both). The unadapted float32 result is stored too
(``loss_rpn_cls_float32``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detectron2_weights_fixture import _build, _git_head, _stub_c  # noqa: E402

SEED = 20
IMAGES = 2
LEVELS = (48, 24)  # anchors per level (3 anchors x 16 and x 8 locations)
POSITIVES, NEGATIVES = 20, 30  # labelled anchors per image
PROPOSALS = (12, 8)
NUM_CLASSES = 3


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` boxes ``(x1, y1, x2, y2)`` in quarter pixels, 4..64 px wide and high."""
    xy = rng.integers(0, 400, (n, 2)) / 4.0
    wh = rng.integers(16, 257, (n, 2)) / 4.0
    return np.concatenate([xy, xy + wh], axis=1)


def _near(rng: np.random.Generator, boxes: np.ndarray) -> np.ndarray:
    """Boxes that overlap ``boxes``: each corner moved by up to 4 px (quarter pixels), the
    size kept positive."""
    moved = boxes + rng.integers(-16, 17, boxes.shape) / 4.0
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1.0)
    return moved


def draw_inputs(seed: int) -> dict:
    """The fixture's inputs (see the module doc), as lists."""
    rng = np.random.default_rng(seed)
    total = sum(LEVELS)
    anchors = _boxes(rng, total)
    rpn_gt = [_near(rng, anchors) for _ in range(IMAGES)]
    labels = []
    for _ in range(IMAGES):
        lab = np.full(total, -1)
        order = rng.permutation(total)
        lab[order[:POSITIVES]] = 1
        lab[order[POSITIVES:POSITIVES + NEGATIVES]] = 0
        labels.append(lab)
    logits = rng.standard_normal((IMAGES, total))
    deltas = rng.standard_normal((IMAGES, total, 4)) * 0.5
    proposals = [_boxes(rng, n) for n in PROPOSALS]
    roi_gt = [_near(rng, p) for p in proposals]
    classes = [np.where(rng.random(n) < 0.5, NUM_CLASSES, rng.integers(0, NUM_CLASSES, n))
               for n in PROPOSALS]
    rows = sum(PROPOSALS)
    scores = rng.standard_normal((rows, NUM_CLASSES + 1))
    box_deltas = rng.standard_normal((rows, 4 * NUM_CLASSES))
    return {"rpn": {"levels": list(LEVELS), "anchors": anchors.tolist(),
                    "gt_boxes": [g.tolist() for g in rpn_gt],
                    "gt_labels": [lab.tolist() for lab in labels],
                    "objectness_logits": logits.tolist(), "anchor_deltas": deltas.tolist()},
            "roi": {"proposal_boxes": [p.tolist() for p in proposals],
                    "gt_boxes": [g.tolist() for g in roi_gt],
                    "gt_classes": [c.tolist() for c in classes],
                    "scores": scores.tolist(), "proposal_deltas": box_deltas.tolist()}}


def _float64_boxes(values):
    """Detectron2 ``Boxes`` holding a float64 tensor (see the module doc)."""
    import torch
    from detectron2.structures import Boxes

    tensor = torch.tensor(values, dtype=torch.float64)
    boxes = Boxes(tensor)
    boxes.tensor = tensor
    return boxes


class _Float64BCE:
    """``torch.nn.functional`` whose ``binary_cross_entropy_with_logits`` takes its targets in
    the logits' dtype (see the module doc)."""

    def __getattr__(self, name: str):
        import torch.nn.functional as F

        return getattr(F, name)

    @staticmethod
    def binary_cross_entropy_with_logits(logits, targets, **kwargs):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), **kwargs)


def _float64_bce(on: bool) -> None:
    """Detectron2's RPN module with (``on``) or without the float64 BCE of the module doc."""
    import torch.nn.functional as F
    from detectron2.modeling.proposal_generator import rpn

    rpn.F = _Float64BCE() if on else F


def run_detectron2(d2_root: Path, inputs: dict) -> dict:
    """Detectron2's two loss functions on ``inputs``."""
    import torch
    from detectron2.structures import Instances
    from detectron2.utils.events import EventStorage

    model, cfg = _build(d2_root)
    rpn, predictor = model.proposal_generator, model.roi_heads.box_predictor
    r, o = inputs["rpn"], inputs["roi"]
    split = np.cumsum(r["levels"])[:-1].tolist()
    anchors = [_float64_boxes(a) for a in np.split(np.array(r["anchors"]), split)]
    logits = torch.tensor(r["objectness_logits"], dtype=torch.float64)
    deltas = torch.tensor(r["anchor_deltas"], dtype=torch.float64)
    sizes = list(r["levels"])
    proposals = []
    for boxes, gt, classes in zip(o["proposal_boxes"], o["gt_boxes"], o["gt_classes"],
                                  strict=True):
        inst = Instances((512, 512))
        inst.proposal_boxes = _float64_boxes(boxes)
        inst.gt_boxes = _float64_boxes(gt)
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        proposals.append(inst)
    predictions = (torch.tensor(o["scores"], dtype=torch.float64),
                   torch.tensor(o["proposal_deltas"], dtype=torch.float64))
    def rpn_losses():
        return rpn.losses(
            anchors, list(logits.split(sizes, dim=1)),
            [torch.tensor(lab, dtype=torch.int64) for lab in r["gt_labels"]],
            list(deltas.split(sizes, dim=1)),
            [torch.tensor(g, dtype=torch.float64) for g in r["gt_boxes"]])

    with EventStorage():
        float32 = float(rpn_losses()["loss_rpn_cls"])
        _float64_bce(True)
        rpn_out = rpn_losses()
        _float64_bce(False)
        roi_out = predictor.losses(predictions, proposals)
    settings = {k: cfg.MODEL[k.split(".")[0]][k.split(".")[1]] for k in (
        "RPN.SMOOTH_L1_BETA", "RPN.BATCH_SIZE_PER_IMAGE", "RPN.LOSS_WEIGHT",
        "RPN.BBOX_REG_LOSS_WEIGHT", "RPN.BBOX_REG_LOSS_TYPE", "ROI_BOX_HEAD.SMOOTH_L1_BETA",
        "ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE")}
    losses = {**rpn_out, **roi_out}
    return {"losses": {k: float(v) for k, v in losses.items()},
            "dtypes": {k: str(v.dtype) for k, v in losses.items()},
            "loss_rpn_cls_float32": float32,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detectron2", type=Path, required=True)
    ap.add_argument("--fvcore", type=Path, required=True)
    ap.add_argument("--out", type=Path,
                    default=Path("tests/fixtures/parity_detectron2/losses.json"))
    args = ap.parse_args()
    sys.path[:0] = [str(args.detectron2), str(args.fvcore)]
    _stub_c()
    inputs = draw_inputs(SEED)
    result = run_detectron2(args.detectron2, inputs)
    fixture = {"detectron2_commit": _git_head(args.detectron2),
               "fvcore_version": (args.fvcore / "VERSION").read_text().strip()
               if (args.fvcore / "VERSION").is_file() else "unknown",
               "seed": SEED, "num_classes": NUM_CLASSES, **result, "inputs": inputs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {args.out}: {fixture['losses']}")


if __name__ == "__main__":
    main()

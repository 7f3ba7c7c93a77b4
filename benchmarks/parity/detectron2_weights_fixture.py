"""Write the Detectron2 weight-file parity fixture: Detectron2 v0.6's own Faster R-CNN R-50-FPN,
run on seeded weights, stage by stage (``tests/tasks/detection/test_detectron2_parity.py``).

Usage (a checkout of facebookresearch/detectron2 at tag v0.6 = ``d1e04565d3bec8719335b88be9e9b
961bf3ec464`` and the fvcore sources, version ``0.1.5.post20221221``; Detectron2's pure-Python
dependencies ``yacs``, ``iopath``, ``tabulate``, ``termcolor``, ``omegaconf`` installed, and
Pillow < 10: v0.6's ``data/transforms/transform.py`` names ``Image.LINEAR``, which Pillow 10
removed)::

    PYTHONPATH=src python benchmarks/parity/detectron2_weights_fixture.py \\
        --detectron2 <detectron2 v0.6 checkout> --fvcore <fvcore sources> \\
        [--out tests/fixtures/parity_detectron2/faster_rcnn_r50_fpn.json]

What runs, unchanged: Detectron2's ``config/defaults.py`` with ``configs/Base-RCNN-FPN.yaml``
merged in (the base of the model-zoo Faster R-CNN FPN detectors that the FCFD authors use as
teachers) and small widths so that the fixture is small: ``RESNETS.DEPTH`` 50,
``WIDTH_PER_GROUP`` 8 (bottleneck widths 8..64; ``RES2_OUT_CHANNELS`` 256 and
``STEM_OUT_CHANNELS`` 64 as the model zoo), ``STRIDE_IN_1X1`` true (MSRA), ``FPN.OUT_CHANNELS``
16, ``ROI_BOX_HEAD.FC_DIM`` 32, ``ROI_HEADS.NUM_CLASSES`` 3; ``INPUT.FORMAT`` BGR, the caffe
``PIXEL_MEAN`` and std 1 (the defaults). ``modeling.build_model`` builds it;
``checkpoint.DetectionCheckpointer`` loads the weights from a ``.pkl`` (the model-zoo format,
``{"model": ..., "__author__": ...}``), then everything runs in float64 in eval mode on one
image: ``preprocess_image``, the bottom-up ResNet (res2..res5), the FPN (p2..p6), the RPN
head's objectness and deltas, the anchors, the RPN's proposals, the box pooler + box head +
predictor on fixed boxes, and ``inference`` (the final detections). A second file in the MSRA
Caffe2 blob names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ..., ``fc1000_w``)
goes through the checkpointer's Caffe2 path (``_load_file``, ``c2_model_loading``) into the
bottom-up ResNet alone, whose res2..res5 are recorded too.

Detectron2's compiled extension is not built: v0.6 pools, runs NMS and decodes boxes with
torchvision's operators, and ``detectron2._C`` serves only deformable convolutions and rotated
boxes, which this model never calls; an empty module stands in for it (:func:`_stub_c`). One
function is replaced (:func:`_float32_nms`): Detectron2's ``layers.nms.batched_nms`` casts the
boxes to float32 and not the scores, which torchvision's NMS refuses for float64 scores; the
replacement casts both, which is Detectron2's own NMS whenever Detectron2 can run it (float32
scores). So both sides decide NMS on float32 boxes (kdlab's torchvision NMS on float64 ones:
the two agree except at IoUs within float32 rounding of the threshold).

The weights (``detectron2_weights_setup.draw_weights``, which the test also runs): one
``numpy.random.default_rng(seed)``, drawn per name in sorted order: FrozenBN ``norm.weight``
and ``norm.running_var`` uniform in [0.5, 1.5) (variances positive), other weights of two or
more dimensions normal with std ``sqrt(1 / fan_in)`` (fan-in = product of all but the first
dimension) divided by 128 for the stem convolution (it reads pixels minus the mean) and by 10
for the four prediction layers (so that proposals and detections are varied boxes), every
other tensor (biases, BN biases and means) normal with std 0.1. The image:
RGB pixels, one seeded uniform integer in 0..255 per value, 64 x 96 (a multiple of 32: no
padding; no resize).

Tensors of more than 512 values are stored as a digest (``detectron2_weights_setup.digest``):
256 values at evenly strided flat indices, the sum and the sum of absolute values.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detectron2_weights_setup import (  # noqa: E402
    CONFIG,
    FIXED_BOXES,
    IMAGE_SIZE,
    MSRA_SEED,
    NUM_CLASSES,
    SEED,
    c2_blob_name,
    digest,
    draw_image,
    draw_weights,
)


def _git_head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = path / "COMMIT"
        return commit.read_text().strip() if commit.is_file() else "unknown"


def _stub_c() -> None:
    """An empty ``detectron2._C`` (imported by ``layers/deform_conv.py``,
    ``roi_align_rotated.py`` and ``rotated_boxes.py``; none of their operators runs here)."""
    sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))


def _float32_nms() -> None:
    """Detectron2's NMS on float32 boxes and scores (see the module doc), where its RPN and
    box head call it."""
    from detectron2.modeling.proposal_generator import proposal_utils
    from detectron2.modeling.roi_heads import fast_rcnn
    from torchvision.ops import boxes as box_ops

    def batched_nms(boxes, scores, idxs, iou_threshold):
        return box_ops.batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)

    proposal_utils.batched_nms = fast_rcnn.batched_nms = batched_nms


def _build(d2_root: Path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(d2_root / "configs" / "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list([v for kv in CONFIG.items() for v in kv])
    return build_model(cfg).eval(), cfg


def _load(model, weights: dict[str, np.ndarray], author: str, tmp: Path) -> None:
    """Load through Detectron2's checkpointer; every tensor must have been matched."""
    from detectron2.checkpoint import DetectionCheckpointer

    path = tmp / f"{author}.pkl"
    data = weights if author == "Caffe2" else {"model": weights, "__author__": author}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    DetectionCheckpointer(model).load(str(path), checkpointables=[])


def _check_loaded(model, expected: dict[str, np.ndarray]) -> None:
    """Every ``expected`` tensor is in ``model`` as given (the checkpointer only logs)."""
    state = model.state_dict()
    wrong = [k for k, v in expected.items()
             if k not in state or not np.array_equal(state[k].numpy(), v)]
    if wrong:
        raise SystemExit(f"Detectron2 did not load {len(wrong)} tensors, e.g. {wrong[:3]}")


def run_detectron2(d2_root: Path, tmp: Path) -> dict:
    """Detectron2's model on the fixture's weights and image: every stage, as digests."""
    import torch
    from detectron2.structures import Boxes

    model, cfg = _build(d2_root)
    model.double()  # before loading: the float64 weights stay float64
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    weights = draw_weights(shapes, SEED)
    _load(model, weights, "kdlab parity fixture", tmp)
    _check_loaded(model, weights)
    image = torch.from_numpy(draw_image(SEED)).flip(0)  # BGR, as Detectron2 reads it
    out: dict = {}
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        out["input"] = digest(images.tensor)
        bottom = model.backbone.bottom_up(images.tensor)
        out.update({k: digest(v) for k, v in bottom.items()})
        feats = model.backbone(images.tensor)
        out.update({k: digest(v) for k, v in feats.items()})
        rpn = model.proposal_generator
        levels = [feats[f] for f in rpn.in_features]
        logits, deltas = rpn.rpn_head(levels)
        out.update({f"rpn_objectness_{i}": digest(v) for i, v in enumerate(logits)})
        out.update({f"rpn_deltas_{i}": digest(v) for i, v in enumerate(deltas)})
        anchors = rpn.anchor_generator(levels)
        out["anchors"] = digest(torch.cat([a.tensor for a in anchors]))
        proposals, _ = rpn(images, feats, None)
        out["proposals"] = digest(proposals[0].proposal_boxes.tensor)
        roi = model.roi_heads
        boxes = [Boxes(torch.tensor(FIXED_BOXES, dtype=torch.float64))]
        x = roi.box_pooler([feats[f] for f in roi.box_in_features], boxes)
        scores, box_deltas = roi.box_predictor(roi.box_head(x))
        out["box_scores"], out["box_deltas"] = digest(scores), digest(box_deltas)
        h, w = IMAGE_SIZE
        det = model.inference([{"image": image, "height": h, "width": w}])[0]["instances"]
        out["detections"] = {"boxes": digest(det.pred_boxes.tensor),
                             "scores": digest(det.scores),
                             "classes": det.pred_classes.tolist()}
    msra = _msra_backbone(d2_root, tmp, images.tensor)
    return {"stages": out, "shapes": shapes, "msra": msra, "cfg_input_format": cfg.INPUT.FORMAT}


def _msra_backbone(d2_root: Path, tmp: Path, tensor) -> dict:
    """The bottom-up ResNet loaded from MSRA-named blobs (Detectron2's Caffe2 path)."""
    import torch

    model, _ = _build(d2_root)
    body = {k.removeprefix("backbone.bottom_up."): list(v.shape)
            for k, v in model.state_dict().items()
            if k.startswith("backbone.bottom_up.") and "running_" not in k}
    blob_shapes = {c2_blob_name(k): s for k, s in body.items()}
    blob_shapes.update({"fc1000_w": [10, 2048], "fc1000_b": [10]})  # dropped classifier
    blobs = draw_weights(blob_shapes, MSRA_SEED)
    model.double()
    _load(model, blobs, "Caffe2", tmp)
    expected = {f"backbone.bottom_up.{k}": blobs[c2_blob_name(k)] for k in body}
    stats = {k: np.zeros(v.shape) if k.endswith("mean") else np.ones(v.shape)
             for k, v in model.state_dict().items()
             if k.startswith("backbone.bottom_up.") and "running_" in k}
    _check_loaded(model, {**expected, **stats})
    with torch.no_grad():
        bottom = model.backbone.bottom_up(tensor)
    return {"blob_shapes": blob_shapes, "seed": MSRA_SEED,
            "stages": {k: digest(v) for k, v in bottom.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detectron2", type=Path, required=True)
    ap.add_argument("--fvcore", type=Path, required=True)
    ap.add_argument("--out", type=Path,
                    default=Path("tests/fixtures/parity_detectron2/faster_rcnn_r50_fpn.json"))
    args = ap.parse_args()
    sys.path[:0] = [str(args.detectron2), str(args.fvcore)]
    _stub_c()
    _float32_nms()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_detectron2(args.detectron2, Path(tmp))
    fixture = {"detectron2_commit": _git_head(args.detectron2),
               "fvcore_version": (args.fvcore / "VERSION").read_text().strip()
               if (args.fvcore / "VERSION").is_file() else "unknown",
               "seed": SEED, "image_size": list(IMAGE_SIZE), "num_classes": NUM_CLASSES,
               "config": CONFIG, "fixed_boxes": FIXED_BOXES, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""COCO-style box mAP (mAP@[.5:.95], AP50, AP75, AP small / medium / large) with pycocotools.

Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the official evaluation
(``pycocotools.cocoeval.COCOeval``, 100 detections per image, areas 32^2 / 96^2). The ground
truth and the detections are given as rows of tensors (see :func:`coco_map`), so that the
detection task can gather them from every rank with one collective each. Results are in
percent, as the COCO tables of the FCFD paper; a metric without ground truth in its range is
NaN (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
from torch import Tensor

from kdlab.errors import UserError

#: the metrics, in the order of ``COCOeval.stats[:6]``
METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")

#: columns of a ground-truth row and of a detection row
GT_COLUMNS = ("image", "x1", "y1", "x2", "y2", "label", "area", "iscrowd")
DET_COLUMNS = ("image", "x1", "y1", "x2", "y2", "score", "label")


def _xywh(rows: np.ndarray) -> np.ndarray:
    return np.stack([rows[:, 1], rows[:, 2], rows[:, 3] - rows[:, 1], rows[:, 4] - rows[:, 2]],
                    axis=1)


def coco_map(ground_truth: Tensor, detections: Tensor, image_ids: Tensor) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``ground_truth`` over ``image_ids``.

    ``ground_truth``: ``(M, 8)`` rows ``image, x1, y1, x2, y2, label, area, iscrowd``;
    ``detections``: ``(N, 7)`` rows ``image, x1, y1, x2, y2, score, label``; boxes in absolute
    pixels (xyxy). ``image_ids``: every evaluated image (also those without boxes). The
    categories are the labels that occur in either.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError("COCO evaluation needs pycocotools; install it with "
                        "`pip install pycocotools`.") from None
    gt = ground_truth.detach().double().cpu().numpy().reshape(-1, len(GT_COLUMNS))
    dt = detections.detach().double().cpu().numpy().reshape(-1, len(DET_COLUMNS))
    images = [{"id": int(i)} for i in sorted({int(i) for i in image_ids.tolist()})]
    labels = sorted({int(v) for v in gt[:, 5]} | {int(v) for v in dt[:, 6]})
    categories = [{"id": c} for c in labels]
    gt_boxes, dt_boxes = _xywh(gt), _xywh(dt)
    gt_anns = [{"id": n + 1, "image_id": int(r[0]), "category_id": int(r[5]),
                "bbox": gt_boxes[n].tolist(), "area": float(r[6]), "iscrowd": int(r[7])}
               for n, r in enumerate(gt)]
    dt_anns = [{"id": n + 1, "image_id": int(r[0]), "category_id": int(r[6]),
                "bbox": dt_boxes[n].tolist(), "score": float(r[5]),
                "area": float(dt_boxes[n, 2] * dt_boxes[n, 3]), "iscrowd": 0}
               for n, r in enumerate(dt)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        coco_gt.createIndex()
        coco_dt.createIndex()
        if not gt_anns:
            return {k: math.nan for k in METRICS}
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (100.0 * float(v) if v >= 0 else math.nan)
            for k, v in zip(METRICS, ev.stats[:6], strict=True)}

"""How a detector's RPN and box pooler see a set of ground-truth boxes.

Two numbers decide whether a two-stage detector can learn a box at all, before any training:

- **the FPN level the box is pooled from.** The box pooler maps a box of side
  ``s = sqrt(w h)`` (input pixels, after the detector's resize) to level
  ``k = floor(k0 + log2(s / s0))`` clamped to the levels it reads (Lin et al., "Feature
  Pyramid Networks for Object Detection", CVPR 2017, Eq. 1; torchvision's ``LevelMapper``
  with ``canonical_scale`` s0 and ``canonical_level`` k0). What the ROI head then sees is
  ``s / stride`` cells per side of that level: a box spanning one or two cells of a coarse
  map is pooled into a 7 x 7 grid of interpolated copies of the same few values.
- **the best IoU between the box and any anchor.** The RPN's matcher labels an anchor
  positive at IoU >= ``fg_iou_thresh`` (0.7 in torchvision); a box whose best anchor stays
  below it is learnt only through the "best available anchor" fallback
  (``allow_low_quality_matches``), one weak anchor per box.

:func:`box_geometry` reports both for a batch, from the detector's own modules (its
transform, backbone feature shapes, level mapper and anchor generator), so that a test or a
user can check a detector built for a new input size or data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou
from torchvision.ops.poolers import _setup_scales

from kdlab.tasks.detection.models.detector import Detector, Targets, _training_targets


@dataclass
class BoxGeometry:
    """Per ground-truth box of a batch (concatenated over the images).

    ``side``: sqrt(area) in the detector's input pixels (after its resize). ``level``: the
    index into ``pooled_levels`` (the FPN levels the box pooler reads) it is pooled from;
    ``cells``: its side in cells of that level. ``best_iou``: its best IoU with any anchor;
    ``anchor_level``: the index into ``anchor_levels`` of that anchor's level.
    ``rpn_fg_iou`` / ``rpn_bg_iou``: the RPN matcher's thresholds.
    """

    side: Tensor
    level: Tensor
    cells: Tensor
    best_iou: Tensor
    anchor_level: Tensor
    pooled_levels: list[str]
    pooled_strides: list[float]
    anchor_levels: list[str]
    rpn_fg_iou: float
    rpn_bg_iou: float

    def level_counts(self) -> dict[str, int]:
        """Boxes pooled from each level the pooler reads."""
        return {n: int((self.level == i).sum()) for i, n in enumerate(self.pooled_levels)}

    def anchor_level_counts(self) -> dict[str, int]:
        """Boxes whose best anchor lies on each FPN level."""
        return {n: int((self.anchor_level == i).sum()) for i, n in enumerate(self.anchor_levels)}

    def positive_fraction(self) -> float:
        """Fraction of the boxes with an anchor at or above the RPN's positive threshold."""
        return float((self.best_iou >= self.rpn_fg_iou).float().mean())


def box_geometry(det: Detector, images: Tensor | Sequence[Tensor],
                 targets: Targets) -> BoxGeometry:
    """The pooled level and best anchor IoU of every ground-truth box in ``targets``, as
    ``det`` sees them (its eval-mode resize; only the shapes of its features matter)."""
    net = det.net
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            image_list, tv_targets = net.transform(list(images), _training_targets(targets))
            # every image of the padded batch has the same feature shapes: one is enough
            fpn = net.backbone(image_list.tensors[:1])
    finally:
        net.train(was_training)
    pool = net.roi_heads.box_roi_pool
    names = [n for n in fpn if n in pool.featmap_names]  # torchvision's _filter_input order
    scales, mapper = _setup_scales([fpn[n] for n in names], image_list.image_sizes,
                                   pool.canonical_scale, pool.canonical_level)
    boxes = [t["boxes"] for t in tv_targets]
    gt = torch.cat(boxes)
    side = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).clamp(min=0).sqrt()
    level = mapper(boxes)
    strides = [1.0 / s for s in scales]
    cells = side / torch.tensor(strides, dtype=side.dtype)[level]
    anchors = net.rpn.anchor_generator(image_list, list(fpn.values()))
    per_level = [f.shape[-2] * f.shape[-1] * a for f, a in
                 zip(fpn.values(), net.rpn.anchor_generator.num_anchors_per_location(),
                     strict=True)]
    bounds = torch.tensor(per_level).cumsum(0)
    best, where = [], []
    for b, a in zip(boxes, anchors, strict=True):
        if len(b) == 0:
            continue
        iou, idx = box_iou(b, a).max(dim=1)
        best.append(iou)
        where.append(torch.searchsorted(bounds, idx, right=True))
    matcher = net.rpn.proposal_matcher
    return BoxGeometry(
        side=side, level=level, cells=cells,
        best_iou=torch.cat(best) if best else side.new_zeros(0),
        anchor_level=torch.cat(where) if where else level.new_zeros(0),
        pooled_levels=names, pooled_strides=strides, anchor_levels=list(fpn),
        rpn_fg_iou=float(matcher.high_threshold), rpn_bg_iou=float(matcher.low_threshold))


__all__ = ["BoxGeometry", "box_geometry"]

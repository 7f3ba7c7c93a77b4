"""FGFI's fine-grained imitation mask: the feature locations near the ground-truth boxes.

Wang, Yuan, Zhang & Feng, "Distilling Object Detectors with Fine-grained Feature Imitation",
CVPR 2019, Sec. 3.1: for every ground-truth box, the IoU of every anchor with it is computed
and ``M = psi * max IoU`` is its threshold; the anchors above it are "near" the object, and a
feature location is imitated when any of its anchors is near any box (the union over anchors
and boxes). As in the authors' code (the mask they build inside the RPN's anchor-target
layer): the maximum is taken over *all* anchors of the map, including those crossing the
image border; the comparison is strict (``IoU > psi * max``); ``psi = 0.5``.

On an FPN (kdlab's extension: the authors' detector has one map) each level has its own
anchors and gets its own mask; ``scope="image"`` takes each box's maximum IoU over the
anchors of every level together (the authors' "all anchors of the RPN"), ``scope="level"``
over each level's own anchors (a box then lights up every level).

IoU convention: ``legacy_iou=False`` is the continuous IoU of torchvision's ``box_iou`` (what
the detector's own matcher uses); ``legacy_iou=True`` the authors' (py-faster-rcnn's)
``+1`` pixel convention, where a box ``(x1, y1, x2, y2)`` is ``x2 - x1 + 1`` wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from kdlab.errors import UserError

SCOPES = ("image", "level")


def legacy_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU ``(N, M)`` with the ``+1`` pixel convention of py-faster-rcnn (widths and heights
    ``x2 - x1 + 1``); a box of zero such area has IoU 0 with everything."""
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def imitation_masks(anchors: Sequence[Tensor], gt_boxes: Tensor, psi: float = 0.5, *,
                    legacy_iou: bool = False, scope: str = "image") -> list[Tensor]:
    """FGFI's imitation mask of one image, per level: ``(H_l, W_l)`` booleans.

    ``anchors``: per level, the anchors ``(H_l, W_l, A_l, 4)`` of every location (``x1, y1,
    x2, y2`` in the frame of ``gt_boxes``); ``gt_boxes``: ``(K, 4)``. A location is set when
    one of its anchors has ``IoU > psi * max IoU`` with one box, the maximum taken per box
    over the anchors of ``scope``. No box: nothing is set.
    """
    if scope not in SCOPES:
        raise UserError(f"FGFI's mask scope must be 'image' (each box's max IoU over every "
                        f"level's anchors) or 'level' (per level), got {scope!r}.")
    if not 0.0 <= psi <= 1.0:
        raise UserError(f"FGFI's psi (the fraction of each box's max IoU) must be in [0, 1], "
                        f"got {psi}.")
    iou_fn = legacy_box_iou if legacy_iou else box_iou
    boxes = gt_boxes.to(anchors[0].dtype)
    if boxes.shape[0] == 0:
        return [torch.zeros(a.shape[:2], dtype=torch.bool, device=a.device) for a in anchors]
    ious = [iou_fn(a.reshape(-1, 4), boxes).view(*a.shape[:3], -1) for a in anchors]
    per_level_max = [i.flatten(0, 2).amax(dim=0) for i in ious]  # (K,) per level
    if scope == "image":
        overall = torch.stack(per_level_max).amax(dim=0)
        per_level_max = [overall] * len(ious)
    return [(i > psi * m).any(dim=3).any(dim=2) for i, m in zip(ious, per_level_max,
                                                                strict=True)]


def batch_masks(anchors: Sequence[Tensor], gt_boxes: Sequence[Tensor], psi: float = 0.5, *,
                legacy_iou: bool = False, scope: str = "image") -> list[Tensor]:
    """:func:`imitation_masks` of every image, stacked per level: ``(B, H_l, W_l)``."""
    per_image = [imitation_masks(anchors, g, psi, legacy_iou=legacy_iou, scope=scope)
                 for g in gt_boxes]
    return [torch.stack([m[level] for m in per_image]) for level in range(len(anchors))]


__all__ = ["SCOPES", "batch_masks", "imitation_masks", "legacy_box_iou"]

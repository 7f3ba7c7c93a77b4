"""Semantic segmentation metrics from one confusion matrix over a whole split.

``cm[t, p]`` counts the pixels of true class ``t`` predicted as ``p``; pixels whose target is
the ignore index (or outside ``0..K-1``) are not counted. From it (Long et al., "Fully
Convolutional Networks for Semantic Segmentation", CVPR 2015, Sec. 5):

* IoU of class ``k``: ``cm[k, k] / (sum_p cm[k, p] + sum_t cm[t, k] - cm[k, k])``;
* mIoU: the mean IoU over the classes that occur (in the targets or the predictions) --
  a class with an empty union has no IoU (NaN) and is left out, as in mmsegmentation and
  torchmetrics; CIRKD averages over all classes, which agrees whenever every class occurs
  in the split (Cityscapes, VOC and ADE20K validation sets);
* pixel accuracy: ``trace(cm) / cm.sum()``;
* mean class accuracy: the mean of ``cm[k, k] / sum_p cm[k, p]`` over classes in the targets.

Percent, like classification's top-1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int,
                     ignore_index: int | None = None) -> Tensor:
    """``(K, K)`` int64 counts of (target, prediction) pairs of two equally shaped label maps."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    pairs = target[valid] * num_classes + pred[valid].clamp(0, num_classes - 1)
    return torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)


def class_iou(cm: Tensor) -> Tensor:
    """Per-class IoU (float64, in [0, 1]); NaN for a class in neither targets nor predictions."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)


def scores(cm: Tensor) -> dict[str, float]:
    """``miou``, ``pixel_acc``, ``mean_acc`` (percent) and ``pixels`` of a confusion matrix."""
    cm = cm.double()
    total = cm.sum()
    support = cm.sum(1)
    acc = cm.diagonal()[support > 0] / support[support > 0]
    iou = class_iou(cm)
    return {
        "miou": 100.0 * float(iou.nanmean()) if bool((~iou.isnan()).any()) else 0.0,
        "pixel_acc": 100.0 * float(cm.diagonal().sum() / total) if total > 0 else 0.0,
        "mean_acc": 100.0 * float(acc.mean()) if acc.numel() else 0.0,
        "pixels": int(total),
    }

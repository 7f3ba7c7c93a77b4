"""A Faster R-CNN as it is deployed: one image -> boxes, scores, labels.

The graph ``kdlab export`` writes is :class:`OneImageDetector`: torchvision's detector
(resize inside the graph, backbone + FPN, RPN, ROI head, NMS, boxes mapped back to the input
pixels) on one image per call, returning three tensors instead of torchvision's list of
dicts. The image size is fixed to the validation images' (``input_size`` for the scenes);
the number of detections ``n`` is data-dependent (at most the detector's
``detections_per_img``).

``torch.export`` (behind both the ``.pt2`` file and the ONNX one) cannot capture two
torchvision functions as they are written: ``batched_nms`` branches in Python on the number
of boxes and ``_multiscale_roi_align`` takes ``len()`` of a data-dependent tensor.
:func:`traceable_torchvision` swaps in equivalents without those branches while the graph is
captured (same kept boxes: per-class NMS by the coordinate offset trick, as torchvision does
below 4,000 boxes; ROI features written level by level with ``index_put``), and puts the
originals back afterwards. Eager detectors never see them.

Detections are compared (:func:`compare_detections`) by pairing each PyTorch detection with
the exported one of the same label whose box is nearest, so that a different order of equal
scores is not a difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torchvision
import torchvision.ops.boxes as box_ops
import torchvision.ops.poolers as poolers
from torch import Tensor, nn

from kdlab.tasks.deploy import DeploySpec, OutputMismatch

OUTPUTS = ("boxes", "scores", "labels")


class OneImageDetector(nn.Module):
    """``images (1, C, H, W) -> (boxes (n, 4), scores (n,), labels (n,))`` of a torchvision
    detector in eval mode (boxes x1, y1, x2, y2 in input pixels)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.training = net.training  # a wrapper, in the network's mode

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        found = self.net([images[0]])[0]
        return found["boxes"], found["scores"], found["labels"]


def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS by offsetting each class's boxes beyond the others' (torchvision's
    coordinate trick) with no branch on the number of boxes (an empty input gives an empty
    result through the offset's max over the boxes and a zero)."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (top + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


def _multiscale_roi_align(x_filtered: list[Tensor], boxes: list[Tensor], output_size: list[int],
                          sampling_ratio: int, scales: list[float] | None,
                          mapper: poolers.LevelMapper | None) -> Tensor:
    """torchvision's multi-scale ROI align with the ROI count read from a shape, not ``len``."""
    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    rois = poolers._convert_to_roi_format(boxes)
    first = x_filtered[0]
    if len(x_filtered) == 1:
        return torchvision.ops.roi_align(first, rois, output_size=output_size,
                                         spatial_scale=scales[0], sampling_ratio=sampling_ratio)
    levels = mapper(boxes)
    result = first.new_zeros((rois.shape[0], first.shape[1], *output_size))
    for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
        idx = torch.where(levels == level)[0]
        pooled = torchvision.ops.roi_align(feature, rois[idx], output_size=output_size,
                                           spatial_scale=scale, sampling_ratio=sampling_ratio)
        result = result.index_put((idx,), pooled.to(result.dtype))
    return result


@contextlib.contextmanager
def traceable_torchvision() -> Iterator[None]:
    """torchvision's detection functions that ``torch.export`` can capture, while inside."""
    saved = box_ops.batched_nms, poolers._multiscale_roi_align
    box_ops.batched_nms, poolers._multiscale_roi_align = _batched_nms, _multiscale_roi_align
    try:
        yield
    finally:
        box_ops.batched_nms, poolers._multiscale_roi_align = saved


def compare_detections(names: Sequence[str], reference: Sequence[Tensor],
                       exported: Sequence[Tensor]) -> dict[str, float]:
    """``{"boxes", "scores", "labels"}`` max abs differences over detections paired by label
    and nearest box, highest reference score first; another count of detections or a
    detection without a partner is an :class:`~kdlab.tasks.deploy.OutputMismatch`."""
    ref_boxes, ref_scores, ref_labels = reference
    boxes, scores, labels = exported
    if len(boxes) != len(ref_boxes):
        raise OutputMismatch(f"{len(boxes)} detections instead of {len(ref_boxes)}")
    free = torch.ones(len(boxes), dtype=torch.bool)
    box_diff = score_diff = 0.0
    for i in torch.argsort(ref_scores, descending=True).tolist():
        distance = (boxes.double() - ref_boxes[i].double()).abs().amax(dim=1)
        distance[(labels != ref_labels[i]) | ~free] = float("inf")
        j = int(distance.argmin())
        if not torch.isfinite(distance[j]):
            raise OutputMismatch(f"the detection of label {int(ref_labels[i])} with score "
                                 f"{float(ref_scores[i]):.4f} has no partner")
        free[j] = False
        box_diff = max(box_diff, float(distance[j]))
        score_diff = max(score_diff, abs(float(scores[j]) - float(ref_scores[i])))
    return {"boxes": box_diff, "scores": score_diff, "labels": 0.0}


def detection_spec(net: nn.Module, input_shape: tuple[int, ...]) -> DeploySpec:
    """The :class:`~kdlab.tasks.deploy.DeploySpec` of a torchvision Faster R-CNN."""
    c, h, w = input_shape
    k = int(net.roi_heads.box_predictor.cls_score.out_features) - 1
    resize = net.transform
    sizes = f"min_size {tuple(resize.min_size)}, max_size {resize.max_size}"
    return DeploySpec(
        OneImageDetector(net), OUTPUTS, {},
        f"one image float32 (1, {c}, {h}, {w}) -> boxes float32 (n, 4) as x1, y1, x2, y2 in "
        f"input pixels, scores float32 (n,), labels int64 (n,) in 1..{k}; n <= "
        f"{net.roi_heads.detections_per_img} (resized inside the graph: {sizes})",
        batch=1, capture=traceable_torchvision, compare=compare_detections)

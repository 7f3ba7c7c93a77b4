"""Detectron2's versions of the Faster R-CNN parts where torchvision computes another function.

Detectron2 v0.6 (facebookresearch/detectron2 @ d1e04565, the code the FCFD authors' detection
configs run) and torchvision build the same Faster R-CNN FPN but differ in three places that
change the outputs of the same weights; kdlab's detectors take Detectron2's as opt-in options
(:mod:`kdlab.tasks.detection.models.builders`):

- **anchors** (:class:`D2AnchorGenerator`): Detectron2's cell anchors are not rounded
  (``modeling/anchor_generator.py``, ``generate_cell_anchors``: ``w = sqrt(size^2 / ratio)``,
  ``h = ratio * w``, centred on 0; torchvision rounds them to integers), are float32 (as
  Detectron2's ``Boxes``), and are shifted by the level's declared stride (4, 8, .., 64 for the
  FPN levels; torchvision divides the padded image size by the feature size, which is not 64
  for the max-pooled level when the stride-32 map has an odd size). ``ANCHOR_GENERATOR.OFFSET``
  is 0 in the authors' configs, as torchvision's grid.
- **box pooler** (:class:`D2BoxPooler`): ``ROIAlignV2`` (``modeling/poolers.py``:
  ``ROIAlign(aligned=True)`` - boxes shifted by half a pixel - with ``POOLER_SAMPLING_RATIO``
  0, an adaptive number of samples per bin), where torchvision's ``MultiScaleRoIAlign`` uses the
  legacy ``aligned=False``; the FPN level of a box is ``floor(4 + log2(sqrt(area) / 224 +
  1e-8))`` (``assign_boxes_to_levels``; torchvision adds its epsilon outside the logarithm).
- **bottleneck stride** (:func:`stride_in_1x1`): MSRA's ResNet-50/101 (``RESNETS.STRIDE_IN_1X1``,
  true for the MSRA ImageNet weights and the model-zoo detectors trained from them) downsample
  in the first 1x1 convolution of a block, torchvision's in the 3x3.

What is already the same and needs no option: FrozenBatchNorm (``layers/batch_norm.py``:
``weight * (running_var + eps)^-1/2`` with eps 1e-5, as torchvision's), the stem, the FPN's
lateral and output convolutions, nearest x2 upsampling and its stride-2 max-pooled top level,
the RPN head and its delta layout, the box coders' weights and clamp, the two-FC box head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MultiScaleRoIAlign, roi_align


def d2_cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Detectron2's cell anchors ``(A, 4)`` (float32), size-major then ratio, centred on 0."""
    boxes = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            boxes.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(boxes, dtype=torch.float32)


class D2AnchorGenerator(AnchorGenerator):
    """Detectron2's ``DefaultAnchorGenerator`` in torchvision's interface (see the module doc).

    ``sizes`` / ``aspect_ratios``: per level, as torchvision's; ``strides``: each level's
    stride in input pixels. Anchors are computed in float32 and returned in the features'
    dtype: Detectron2 holds them as ``Boxes``, which are float32 whatever the model's dtype
    (``structures/boxes.py``)."""

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        self.strides = [int(s) for s in strides]
        self.cell_anchors = [d2_cell_anchors(s, a) for s, a in
                             zip(self.sizes, self.aspect_ratios, strict=True)]

    def _level(self, cell: Tensor, size: Sequence[int], stride: int, dtype: torch.dtype
               ) -> Tensor:
        dev = cell.device
        ys = torch.arange(0, size[0] * stride, stride, dtype=torch.float32, device=dev)
        xs = torch.arange(0, size[1] * stride, stride, dtype=torch.float32, device=dev)
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        sx, sy = sx.reshape(-1), sy.reshape(-1)
        shifts = torch.stack((sx, sy, sx, sy), dim=1)
        grid = (shifts.view(-1, 1, 4) + cell.to(dev).view(1, -1, 4)).reshape(-1, 4)
        return grid.to(dtype)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} strides")
        dtype = feature_maps[0].dtype
        flat = torch.cat([self._level(cell, f.shape[-2:], s, dtype) for cell, f, s in
                          zip(self.cell_anchors, feature_maps, self.strides, strict=True)])
        return [flat for _ in image_list.image_sizes]


def d2_box_levels(boxes: Tensor, min_level: int, max_level: int,
                  canonical_size: int = 224, canonical_level: int = 4) -> Tensor:
    """Detectron2's FPN level per box (FPN Eq. 1, ``assign_boxes_to_levels``), 0-based from
    ``min_level``."""
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    level = torch.floor(canonical_level + torch.log2(side / canonical_size + 1e-8))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class D2BoxPooler(MultiScaleRoIAlign):
    """``ROIAlignV2`` over the FPN levels (see the module doc) in torchvision's
    ``MultiScaleRoIAlign`` interface; ``strides``: the pooled levels' strides (4, 8, 16, 32)."""

    def __init__(self, featmap_names: list[str], output_size: int, strides: Sequence[int],
                 sampling_ratio: int = 0) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.strides = [int(s) for s in strides]

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1)
                          for i, b in enumerate(boxes)])
        lo = int(math.log2(self.strides[0]))
        level = d2_box_levels(rois[:, 1:], lo, lo + len(feats) - 1)
        out = rois.new_zeros((len(rois), feats[0].shape[1], *self.output_size),
                             dtype=feats[0].dtype)
        for k, (feat, stride) in enumerate(zip(feats, self.strides, strict=True)):
            idx = torch.nonzero(level == k).squeeze(1)
            pooled = roi_align(feat, rois[idx].to(feat.dtype), self.output_size,
                               spatial_scale=1.0 / stride, sampling_ratio=self.sampling_ratio,
                               aligned=True)
            out.index_put_((idx,), pooled.to(out.dtype))  # roi_align may autocast
        return out


def stride_in_1x1(body: nn.Module) -> int:
    """Move every bottleneck's downsampling stride from its 3x3 to its first 1x1 convolution
    (MSRA's ResNet, Detectron2's ``STRIDE_IN_1X1``); the number of blocks changed."""
    moved = 0
    for block in body.modules():
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
            moved += 1
    return moved


__all__ = ["D2AnchorGenerator", "D2BoxPooler", "d2_box_levels", "d2_cell_anchors",
           "stride_in_1x1"]

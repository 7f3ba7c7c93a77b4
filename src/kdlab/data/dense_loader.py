"""The device-resident loader for dense targets: label maps (segmentation) or boxes (detection).

Like :class:`kdlab.data.device_loader.TensorLoader`: the split is held as uint8 tensors (on the
device by default), each batch is gathered by index, augmented there as batched tensor ops
(:mod:`kdlab.data.dense_augment`: image, label map and boxes move together) and normalised.
Order and augmentation come from one CPU generator seeded from ``(seed, epoch)``, augmentation
parameters are drawn per dataset index, and ranks get ``DistributedSampler``-style shards, so
batches do not depend on the batch size, the number of ranks or a resume.

Targets: ``kind="mask"`` yields ``(B, H, W)`` int64 label maps (ignore index where the crop
left the image); ``kind="boxes"`` yields a list of ``{"boxes": float32 (n, 4) xyxy absolute
pixels, "labels": int64 (n,)}`` per image (boxes are stored padded, ``label 0`` = no box).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from kdlab.data.augment import normalise
from kdlab.data.dense_augment import JointCropFlip, resolve, warp, warp_boxes, warp_images
from kdlab.data.sampling import EpochPlan


def box_targets(boxes: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Padded ``(B, M, 4)`` boxes and ``(B, M)`` labels -> one dict per image holding the
    rows with a label above 0 and a positive width and height (one host sync per batch)."""
    keep = (labels > 0) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    counts = keep.sum(1).tolist()
    flat_boxes, flat_labels = boxes[keep].float(), labels[keep].to(torch.int64)
    return [{"boxes": b, "labels": lab} for b, lab in
            zip(flat_boxes.split(counts), flat_labels.split(counts))]


class DenseTensorLoader(EpochPlan):
    """Batches ``(images, targets, index)`` on ``device`` from in-memory uint8 tensors.

    ``images`` ``(N, C, H, W)``; ``masks`` ``(N, H, W)`` (label maps, for ``kind="mask"``);
    ``boxes`` ``(N, M, 4)`` and ``box_labels`` ``(N, M)`` (for ``kind="boxes"``).
    ``train=True``: shuffled, sharded, last incomplete batch dropped, ``augment`` applied;
    ``train=False``: in order, this rank's unpadded shard, no augmentation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        *,
        kind: str,
        masks: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        ignore_index: int = 255,
        augment: JointCropFlip | None = None,
        scale: float = 255.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if kind not in ("mask", "boxes"):
            raise ValueError(f"kind must be 'mask' or 'boxes', got {kind!r}")
        if kind == "mask" and masks is None or kind == "boxes" and (boxes is None or
                                                                   box_labels is None):
            raise ValueError(f"kind={kind!r} needs its targets")
        self.kind, self.device = kind, torch.device(device)
        self.images, self.masks, self.boxes, self.box_labels = images, masks, boxes, box_labels
        self.ignore_index = ignore_index
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.scale = scale
        self._init_plan(images.shape[0], batch_size=batch_size, train=train, augment=augment,
                        seed=seed, rank=rank, world_size=world_size)

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This batch's stored tensors, moved to the device."""
        parts = [self.images] + ([self.masks] if self.kind == "mask"
                                 else [self.boxes, self.box_labels])
        out = []
        for t in parts:
            x = t[idx]
            if x.device != self.device:
                if self.device.type == "cuda":
                    x = x.pin_memory()
                x = x.to(self.device, non_blocking=True)
            out.append(x)
        return tuple(out)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        order, params = self._plan()
        order_store = order.to(self.images.device)
        order_out = order.to(self.device)
        if params is not None:
            params = tuple(p.to(self.device) for p in params)
        h, w = self.images.shape[-2:]
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            x, *rest = self._gather(order_store[sl])
            index = order_out[sl]
            p = None
            if params is not None and self.augment is not None:
                p = resolve(self.augment, tuple(q[index] for q in params), h, w)
            if self.kind == "mask":
                y = rest[0].to(torch.int64)
                if p is not None:
                    x, y = warp(x, y, p, self.augment.pad, self.ignore_index,
                                self.augment.scales)
                targets: Any = y
            else:
                boxes, labels = rest
                if p is not None:
                    x = warp_images(x, p, self.augment.pad, self.augment.scales)
                    boxes = warp_boxes(boxes, p, h, w, self.augment.pad)
                targets = box_targets(boxes, labels)
            yield normalise(x, self.mean, self.std, self.scale), targets, index

"""A loader over a dataset held as one tensor, on the device (fast path) or in host memory.

The split is one uint8 tensor ``(N, C, H, W)`` plus int64 labels. Each batch is gathered by
index, moved to the device if it is not there already, augmented there as batched tensor ops
(:mod:`kdlab.data.augment`) and normalised. Order and augmentation of an epoch come from one
CPU generator seeded from ``(seed, epoch)``; augmentation parameters are drawn per dataset
index, so they do not depend on the batch size or the number of ranks. With a teacher
soft-label cache (``views``, a :class:`~kdlab.data.soft_labels.CachedTeacher`) each image's
augmentation is instead the stored view the cache picks for it in the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from kdlab.data.augment import CropFlip, crop_flip, normalise
from kdlab.data.base import Batch
from kdlab.data.sampling import EpochPlan

if TYPE_CHECKING:
    from kdlab.data.soft_labels import CachedTeacher


class TensorLoader(EpochPlan):
    """Batches ``(images, targets, index)`` on ``device`` from in-memory tensors.

    ``train=True``: shuffled each epoch, sharded like ``DistributedSampler``, last incomplete
    batch dropped, ``augment`` applied. ``train=False``: in order, every sample of this rank's
    unpadded shard exactly once, no augmentation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: CropFlip | None = None,
        scale: float = 255.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        views: CachedTeacher | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.device = torch.device(device)
        self.images = images
        self.labels = labels.to(images.device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.scale = scale
        self.views = views if train else None
        self._init_plan(images.shape[0], batch_size=batch_size, train=train, augment=augment,
                        seed=seed, rank=rank, world_size=world_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order and augmentation (or cached views) those of ``epoch``."""
        super().set_epoch(epoch)
        if self.views is not None:
            self.views.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        order, params = self._plan()
        if self.views is not None:
            params = None  # each batch's views come from the cache
        store = self.images.device
        order_store = order.to(store)
        order_out = order.to(self.device)
        if params is not None:
            params = tuple(p.to(self.device) for p in params)
        pin = self.device.type == "cuda" and store.type == "cpu"
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order_store[sl]
            x, y = self.images[idx], self.labels[idx]
            if store != self.device:
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            index = order_out[sl]
            if self.views is not None and self.augment is not None:
                x = self.augment.apply(x, self.views.augmentation_params(order[sl]))
            elif params is not None and self.augment is not None:
                dy, dx, flip = (p[index] for p in params)
                x = crop_flip(x, dy, dx, flip, self.augment.pad)
            yield normalise(x, self.mean, self.std, self.scale), y, index

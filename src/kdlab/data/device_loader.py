"""A loader over a dataset held as one tensor, on the device (fast path) or in host memory.

The split is one uint8 tensor ``(N, C, H, W)`` plus int64 labels. Each batch is gathered by
index, moved to the device if it is not there already, augmented there as batched tensor ops
(:mod:`kdlab.data.augment`) and normalised. Order and augmentation of an epoch come from one
CPU generator seeded from ``(seed, epoch)``; augmentation parameters are drawn per dataset
index, so they do not depend on the batch size or the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from kdlab.data.augment import CropFlip, crop_flip, normalise
from kdlab.data.base import Batch
from kdlab.data.sampling import epoch_generator, train_shard, val_shard


class TensorLoader:
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
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.device = torch.device(device)
        self.images = images
        self.labels = labels.to(images.device, torch.int64)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.scale = scale
        self.train = train
        self.augment = augment if train else None
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        n = images.shape[0]
        self._shard_size = -(-n // world_size) if train else val_shard(n, rank, world_size).numel()

    def __len__(self) -> int:
        if self.train:
            return self._shard_size // self.batch_size
        return -(-self._shard_size // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order and augmentation those of ``epoch``."""
        self.epoch = epoch

    def _plan(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        n = self.images.shape[0]
        if not self.train:
            return val_shard(n, self.rank, self.world_size), None
        g = epoch_generator(self.seed, self.epoch)
        order = train_shard(torch.randperm(n, generator=g), self.rank, self.world_size)
        params = self.augment.draw(n, g) if self.augment is not None else None
        return order, params

    def __iter__(self) -> Iterator[Batch]:
        order, params = self._plan()
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
            if params is not None and self.augment is not None:
                dy, dx, flip = (p[index] for p in params)
                x = crop_flip(x, dy, dx, flip, self.augment.pad)
            yield normalise(x, self.mean, self.std, self.scale), y, index

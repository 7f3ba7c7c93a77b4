"""A torch ``DataLoader`` over decoded image files that yields normalised batches on the
device: ImageNet-style folders (classification) and the segmentation folders (VOC,
Cityscapes, ADE20K) read through it. The dataset gives ``(uint8 image, target, index)`` and
has an ``epoch`` attribute; workers decode, normalisation happens on the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from kdlab.data.augment import normalise
from kdlab.data.base import Batch


class FolderLoader:
    """A ``DataLoader`` over an ImageNet ``IndexedFolder`` (or any dataset of ``(uint8 image,
    target, index)`` with an ``epoch`` attribute) that yields normalised batches on device."""

    def __init__(self, dataset: Any, sampler: Any, *, batch_size: int, train: bool,
                 device: torch.device, num_workers: int, mean: tuple, std: tuple,
                 collate_fn: Any = None, scale: float = 255.0, bgr: bool = False,
                 finish: Callable[[torch.Tensor, torch.Tensor],
                                  tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """``mean`` / ``std`` on the ``scale`` of the pixels (255: [0, 1]; 1: 0..255), in the
        channel order the network reads (``bgr``: the decoded RGB channels reversed first);
        ``finish(images, targets)`` runs on the normalised batch (e.g. padding colours)."""
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self.num_workers = num_workers  # processes that decode files (kdlab.runtime.threads)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.scale, self.bgr, self.finish = scale, bgr, finish
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                 num_workers=num_workers, drop_last=train,
                                 pin_memory=device.type == "cuda", collate_fn=collate_fn)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order and augmentation those of ``epoch``."""
        self.dataset.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for images, targets, index in self.loader:
            images = images.to(self.device, non_blocking=True)
            if self.bgr:
                images = images.flip(1)
            images = normalise(images, self.mean, self.std, self.scale)
            targets = targets.to(self.device, non_blocking=True)
            if self.finish is not None:
                images, targets = self.finish(images, targets)
            yield images, targets, index.to(self.device, non_blocking=True)

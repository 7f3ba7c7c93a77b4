"""Deterministic epoch order and per-rank shards (DistributedSampler semantics).

Every random number of an epoch comes from a CPU ``torch.Generator`` seeded from
``(seed, epoch)`` alone, so a resumed run replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch, stream)`` (numpy's SeedSequence)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, stream]).generate_state(2)
    return int(words[0]) << 31 ^ int(words[1])


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator whose whole sequence is a function of ``(seed, epoch, stream)``."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


def train_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of a shuffled ``order``, as ``DistributedSampler(drop_last=False)``.

    The order is padded by repeating its first items up to a multiple of ``world_size``; rank
    ``r`` then takes every ``world_size``-th item starting at ``r``. All shards have one size.
    """
    n = order.numel()
    total = -(-n // world_size) * world_size
    if total > n:
        reps = -(-(total - n) // n)
        order = torch.cat([order, order.repeat(reps)[: total - n]])
    return order[rank:total:world_size]


def val_shard(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Dataset indices ``rank, rank + world_size, ...`` below ``n``: disjoint, covering, unpadded.

    Unlike ``DistributedSampler`` nothing is padded, so metrics reduced by sample counts over
    the ranks are exact; shard sizes (and batch counts) may differ by one between ranks, so an
    evaluation must not run a collective per batch, only one reduction at the end.
    """
    return torch.arange(rank, n, world_size, dtype=torch.int64)


class EpochPlan:
    """The epoch logic of the in-memory loaders: batches per epoch, ``set_epoch``, and each
    epoch's order and per-index augmentation parameters (``augment.draw(n, generator)``).

    ``train=True``: a shuffled ``DistributedSampler``-style shard, the last incomplete batch
    dropped; ``train=False``: this rank's unpadded shard in order, no augmentation.
    """

    def _init_plan(self, n: int, *, batch_size: int, train: bool, augment: object | None,
                   seed: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.train = n, batch_size, train
        self.augment = augment if train else None
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._shard_size = -(-n // world_size) if train else val_shard(n, rank, world_size).numel()

    def __len__(self) -> int:
        if self.train:
            return self._shard_size // self.batch_size
        return -(-self._shard_size // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order and augmentation those of ``epoch``."""
        self.epoch = epoch

    def _plan(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        if not self.train:
            return val_shard(self.n, self.rank, self.world_size), None
        g = epoch_generator(self.seed, self.epoch)
        order = train_shard(torch.randperm(self.n, generator=g), self.rank, self.world_size)
        params = self.augment.draw(self.n, g) if self.augment is not None else None  # type: ignore[attr-defined]
        return order, params

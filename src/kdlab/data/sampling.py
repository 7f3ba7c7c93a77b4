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

"""Collectives over the default process group, each a no-op (or the identity) when
``torch.distributed`` is not initialised, so that metrics and memory banks can call them
whether or not the run is distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the default process group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_gather_rows(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """Every process's ``tensors``, in rank order. Within a process they share one row count;
    counts may differ between processes (they are gathered first, and the rows padded to the
    longest for the collectives). All tensors must be on the device of the backend."""
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    gathered = []
    for x in tensors:
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append([part[:size] for part, size in zip(parts, sizes)])
    return list(zip(*gathered))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op outside a process group)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()

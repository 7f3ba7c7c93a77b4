"""torchrun support: process group from the environment, DDP wrapping, metric reduction.

Launched with ``torchrun --nproc_per_node=N -m kdlab ...`` the environment holds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (nccl on CUDA,
gloo otherwise) and picks the device of the local rank. Only the distiller (student and its
trainable extras) is wrapped by DistributedDataParallel; the frozen teacher is not a
submodule, so it is neither wrapped nor synchronised. With ``train.sync_bn`` the distiller's
BatchNorm layers normalise with the statistics of the global batch
(:func:`sync_batchnorm`), as the segmentation references train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdlab.errors import UserError
from kdlab.runtime.collectives import world_size


@dataclass
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when setup() created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return the info and this rank's
    device (``cuda:LOCAL_RANK`` when ``device`` is CUDA)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, owns_group=False), _local_device(device, local)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(), device
    if not dist.is_available():
        raise UserError("This PyTorch build has no torch.distributed; run without torchrun.")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = _local_device(device, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, owns_group=True), device


def _local_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"Local rank {local_rank} has no GPU ({count} visible); start at most "
                        f"{count} processes per node with torchrun --nproc_per_node.")
    return torch.device("cuda", local_rank)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def self_synced_buffers(model: nn.Module) -> list[str]:
    """Names of the buffers of submodules that keep them identical on every rank themselves
    (a class attribute ``keeps_buffers_in_sync = True``, e.g. CRD's memory banks)."""
    names = []
    for prefix, module in model.named_modules():
        if getattr(module, "keeps_buffers_in_sync", False):
            names += [f"{prefix}.{n}" if prefix else n for n, _ in module.named_buffers()]
    return names


def wrap(model: nn.Module, device: torch.device, *, find_unused: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` (the distiller).

    DDP copies rank 0's buffers to every rank before each forward. Buffers that their module
    keeps in sync itself (:func:`self_synced_buffers`) are copied once, here, and then left to
    it: for CRD's banks over CIFAR-100 that per-step copy is 51 MB, and it would overwrite
    the other ranks' updates if the module did not synchronise them."""
    synced = self_synced_buffers(model)
    if synced:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, synced)
        if world_size() > 1:
            for name in synced:
                dist.broadcast(model.get_buffer(name), src=0)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


#: the BatchNorm classes :func:`sync_batchnorm` turns into SyncBatchNorm (exactly these: a
#: subclass with behaviour of its own, e.g. path-aware statistics, is left alone)
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Make every plain BatchNorm of ``model`` (the distiller: student, method modules, a
    critic; not the frozen teacher, which is no submodule) a ``torch.nn.SyncBatchNorm``;
    returns how many. The modules are converted in place (their class changes, their
    parameters and statistics stay the same tensors), so the staged views and anything else
    that holds them keep working. SyncBatchNorm reduces over the process group in training:
    PyTorch runs it on CUDA only."""
    if device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                        "kernel); run on GPUs or set train.sync_bn=false.")
    count = 0
    for m in model.modules():
        if type(m) in PLAIN_BATCHNORMS:
            m.__class__ = nn.SyncBatchNorm
            m.process_group = None  # the whole world
            count += 1
    return count


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper and/or ``torch.compile`` (the model itself otherwise)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, e.g. before evaluating."""
    if world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, src=0)

"""``build_loaders`` and ``describe``: the data layer's entry points.

``build_loaders(cfg, device)`` looks the dataset up in :data:`DATASETS` and returns train and
validation loaders that yield ``(images, targets, index)`` already on ``device``: images
float32, normalised, NCHW; targets and dataset indices int64. ``loader.set_epoch(e)`` makes
order and augmentation a function of ``(seed, e)``. With ``world_size > 1`` each rank gets a
disjoint shard: training as ``DistributedSampler`` (padded to equal shards), validation
unpadded (every sample on exactly one rank, shard sizes differ by at most one).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch

from kdlab.core.config import DataConfig
from kdlab.core.settings import check_settings
from kdlab.data.augment import CropFlip
from kdlab.data.base import DATASETS, DatasetInfo, DatasetSource, Loaders
from kdlab.data.device_loader import TensorLoader
from kdlab.data.pixels import pixel_scale
from kdlab.errors import UserError

if TYPE_CHECKING:
    from kdlab.data.soft_labels import CachedTeacher

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W), int64 (N,)


def describe(name: str) -> DatasetInfo:
    """The registered dataset's info, without loading data (unknown names suggest close ones)."""
    return DATASETS.get(name).info


def check_config(cfg: DataConfig, rank: int, world_size: int) -> None:
    """Raise a UserError for sizes that cannot work (the ranges declared on
    :class:`DataConfig`'s fields, :func:`~kdlab.core.settings.check_settings`) and a
    ValueError for a rank outside the world."""
    check_settings(cfg, "data")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within world size {world_size}")


def subset_size(n: int, subset: int | None) -> int:
    return n if subset is None else min(n, subset)


def check_batches(train_loader_len: int, cfg: DataConfig, n_train: int, world_size: int) -> None:
    if train_loader_len == 0:
        raise UserError(
            f"data.batch_size={cfg.batch_size} is larger than the {n_train} training samples "
            f"of {world_size} process(es) allow for one batch each; lower data.batch_size or "
            "raise data.train_subset."
        )


class TensorSource(DatasetSource):
    """A dataset small enough to hold as one tensor; subclasses implement :meth:`load`.

    Images are uint8 (divided by :attr:`scale`, 255, once) or float already in [0, 1] (used
    as they are); float images on another range are a UserError (:mod:`kdlab.data.pixels`),
    never divided by 255 a second time. By default (``data.device_resident: null``) the tensor
    lives on the training device and batches are gathered and augmented there; ``false``
    keeps it in host memory and moves each batch (same batches either way).
    """

    augmentation: ClassVar[CropFlip]
    scale: ClassVar[float] = 255.0

    def load(self, cfg: DataConfig) -> tuple[Split, Split]:
        """(train, val) as ((images NCHW, uint8 or float in [0, 1], labels int64), ...) in host
        memory."""
        raise NotImplementedError

    def build(
        self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int, world_size: int
    ) -> Loaders:
        (xt, yt), (xv, yv) = self.load(cfg)
        nt, nv = subset_size(len(yt), cfg.train_subset), subset_size(len(yv), cfg.val_subset)
        store = torch.device(device) if cfg.device_resident is not False else torch.device("cpu")
        name = self.info.name
        scales = [self.scale if x.dtype == torch.uint8 else pixel_scale(x, f"{name}'s {split}")
                  for x, split in ((xt[:nt], "training images"), (xv[:nv], "validation images"))]
        common = dict(device=device, mean=self.info.mean, std=self.info.std,
                      seed=seed, rank=rank, world_size=world_size)
        augment = self.augmentation if cfg.augment else None
        cached = self.open_cache(cfg, xt[:nt], augment, seed) if cfg.teacher_cache else None
        train = TensorLoader(
            xt[:nt].to(store), yt[:nt].to(store), batch_size=cfg.batch_size, train=True,
            augment=augment, views=cached, scale=scales[0], **common)
        val = TensorLoader(xv[:nv].to(store), yv[:nv].to(store),
                           batch_size=cfg.eval_batch_size, train=False, scale=scales[1], **common)
        check_batches(len(train), cfg, nt, world_size)
        info = dataclasses.replace(self.info, train_size=nt, val_size=nv)
        return Loaders(train=train, val=val, info=info, teacher_cache=cached)

    def open_cache(self, cfg: DataConfig, images: torch.Tensor, augment: CropFlip | None,
                   seed: int) -> CachedTeacher:
        """``data.teacher_cache`` opened and checked against these training images (uint8,
        after ``train_subset``) and augmentation; views picked from the run's ``seed``; a few
        entries kept to recompute with the run's teacher (:class:`Probe`)."""
        from kdlab.data.soft_labels import (
            CachedTeacher,
            Probe,
            TeacherCache,
            augmentation_meta,
            data_meta,
        )

        assert cfg.teacher_cache is not None
        cache = TeacherCache.open(cfg.teacher_cache)
        cache.check_data(data_meta(self.info.name, images, self.info.num_classes, self.info.mean,
                                   self.info.std, self.scale, cfg.train_subset))
        cache.check_augmentation(augmentation_meta(augment))
        probe = Probe.pick(cache, images, augment, self.info.mean, self.info.std, self.scale)
        return CachedTeacher(cache, seed, probe)


def build_loaders(
    cfg: DataConfig, device: torch.device, *, seed: int = 0, rank: int = 0, world_size: int = 1,
    source: DatasetSource | None = None,
) -> Loaders:
    """Train and validation loaders for ``cfg.name`` on ``device`` (this rank's shards);
    ``source``: a data source given as an object instead (the Python API's in-memory data,
    :mod:`kdlab.data.memory`)."""
    if source is None:
        source = DATASETS.get(cfg.name)()
    check_config(cfg, rank, world_size)
    if cfg.teacher_cache and not isinstance(source, TensorSource):
        held = [n for n in DATASETS.names() if issubclass(DATASETS.get(n), TensorSource)]
        raise UserError(f"data.teacher_cache works with the datasets held in memory as one "
                        f"tensor ({', '.join(held)}), not {cfg.name!r}; remove "
                        "data.teacher_cache.")
    return source.build(cfg, torch.device(device), seed=seed, rank=rank, world_size=world_size)

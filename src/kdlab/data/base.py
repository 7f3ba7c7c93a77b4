"""Dataset registry, dataset metadata and the interface every dataset entry implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from kdlab.core.registry import Registry

if TYPE_CHECKING:
    from kdlab.core.config import DataConfig


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset (no data loaded).

    ``mean`` and ``std`` are per channel, on the [0, 1] pixel scale; the loaders normalise
    with them. In :class:`Loaders` ``train_size`` / ``val_size`` count the samples actually
    used (after ``train_subset`` / ``val_subset``).
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    train_size: int
    val_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "classification"  # the kdlab.tasks entry whose targets the loaders yield
    ignore_index: int | None = None  # a target value that no loss or metric counts
    #: the name of each target label, indexed by its value (for reports), where known
    class_names: tuple[str, ...] | None = None


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class EpochLoader(Protocol):
    """A loader: ``len`` batches per epoch, ``set_epoch``, and (images, targets, index)."""

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...


@dataclass
class Loaders:
    """The train and validation loaders of one run, and the dataset's (subset-aware) info."""

    train: EpochLoader
    val: EpochLoader
    info: DatasetInfo
    #: with ``data.teacher_cache``: the :class:`~kdlab.data.soft_labels.CachedTeacher` whose
    #: stored views the train loader yields (the distiller reads the teacher's outputs from it)
    teacher_cache: Any = None


class DatasetSource:
    """A registered dataset: class-level :attr:`info` plus :meth:`build` that makes the loaders."""

    info: ClassVar[DatasetInfo]
    #: whether the source reads the input settings ``data.channel_order``, ``pixel_mean``,
    #: ``pixel_std``, ``scales``, ``pad`` and ``crop`` (the segmentation folders do)
    input_settings: ClassVar[bool] = False

    def build(
        self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int, world_size: int
    ) -> Loaders:
        raise NotImplementedError

    @classmethod
    def check_sizes(cls, cfg: DataConfig) -> None:
        """Refuse, before any work, ``data.*`` sizes that this machine cannot hold (a
        UserError with the estimate); datasets whose size the user does not choose have
        nothing to check."""

    @classmethod
    def memory_setting(cls, cfg: DataConfig) -> str | None:
        """The ``data.*`` setting that makes this dataset's memory largest beyond its default
        (an out-of-memory hint names it), or None."""
        return None


#: filled by kdlab.tasks (each task's datasets)
DATASETS: Registry[type[DatasetSource]] = Registry("dataset", filled_by=("kdlab.tasks",))


def train_labels(loader: Any) -> torch.Tensor | None:
    """The class of every training sample by dataset index, where the loader holds them
    without reading images (in-memory tensors, image folders); None otherwise."""
    labels = getattr(loader, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1:
        return labels
    dataset = getattr(loader, "dataset", None)
    targets = getattr(getattr(dataset, "folder", None), "targets", None)
    if targets is not None:
        return torch.as_tensor(list(targets)[: len(dataset)], dtype=torch.int64)
    return None

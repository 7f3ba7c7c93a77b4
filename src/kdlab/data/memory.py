"""Classification data given as Python objects (the Python API, :func:`kdlab.distill`).

Each split is one of:

- a pair of tensors ``(images, labels)``: images ``(N, C, H, W)`` (or ``(N, H, W)``, one
  channel), uint8 on 0..255 or float in [0, 1]; labels ``(N,)`` integers. They are served by
  the same device-resident loader as the built-in datasets
  (:class:`~kdlab.data.device_loader.TensorLoader`);
- a ``torch.utils.data.Dataset`` whose items are ``(image, label)``: an image is a ``(C, H,
  W)`` tensor (uint8 or float in [0, 1]) or a PIL image. kdlab draws the order (from the
  run's seed, sharded under DDP) and batches it, with ``data.num_workers`` workers;
- a ``torch.utils.data.DataLoader`` yielding ``(images, labels)`` batches, used as it is (its
  own batch size, order and transforms; ``set_epoch`` is passed to its sampler).

uint8 images are divided by 255 once; float images must already be in [0, 1] and are not
rescaled (:mod:`kdlab.data.pixels`: a float tensor on the 0..255 scale is a UserError). Then
every image is normalised with ``data.mean`` / ``data.std`` (per channel, [0, 1] scale;
:func:`measure` computes them from the training images when they are not given). With
``data.normalized: true`` the images are taken as already normalised (e.g. by a
``transforms.Normalize``) and passed on unchanged. ``data.augment: true`` adds kdlab's
batched random crop (zero padding of 1/8 of the side) and horizontal flip, drawn per image
index like the built-in datasets' (tensors and Datasets only: a DataLoader augments in its
own transforms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdlab.core.config import DataConfig
from kdlab.data.augment import CropFlip, crop_flip, normalise
from kdlab.data.base import DatasetInfo, DatasetSource, Loaders
from kdlab.data.device_loader import TensorLoader
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.pixels import pixel_scale
from kdlab.data.sampling import EpochPlan
from kdlab.errors import UserError

#: training images :func:`measure` reads from a Dataset or DataLoader for mean and std
MEASURED = 1024
WHAT = "The in-memory data"


# --------------------------------------------------------------------- one split
@dataclass
class Split:
    """One split as the user gave it: ``kind`` is ``tensors``, ``dataset`` or ``loader``."""

    kind: str
    obj: Any  # (images, labels) | Dataset | DataLoader
    where: str  # "train" / "val", for messages

    def __len__(self) -> int:
        if self.kind == "tensors":
            return int(self.obj[1].shape[0])
        if self.kind == "dataset":
            return len(self.obj)
        return len(self.obj.dataset)


def as_split(obj: Any, where: str) -> Split:
    """Recognise ``obj`` (tensors, a Dataset or a DataLoader); a UserError names what to give."""
    if isinstance(obj, DataLoader):
        return Split("loader", obj, where)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor)
                                                                for t in obj):
        images, labels = obj
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise UserError(f"{where}=(images, labels) needs images (N, C, H, W) and labels (N,) "
                            f"of the same N; got {tuple(obj[0].shape)} and {tuple(labels.shape)}.")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise UserError(f"{where}'s labels are {labels.dtype}; give integer class indices.")
        if images.shape[0] == 0:
            raise UserError(f"{where} holds no images (shape {tuple(obj[0].shape)}); give at "
                            "least one (image, label) pair.")
        return Split("tensors", (images, labels.to(torch.int64)), where)
    if isinstance(obj, Dataset):
        try:
            n = len(obj)  # type: ignore[arg-type]
        except TypeError:
            raise UserError(f"{where} is a Dataset without a length; wrap it in a DataLoader "
                            "and pass that.") from None
        if n == 0:
            raise UserError(f"{where} is an empty Dataset; give at least one (image, label) "
                            "pair.")
        return Split("dataset", obj, where)
    raise UserError(f"{where} must be a (images, labels) pair of tensors, a torch Dataset or a "
                    f"DataLoader; got {type(obj).__name__}.")


def _image(x: Any, where: str) -> Tensor:
    """A dataset item's image as a ``(C, H, W)`` tensor (PIL images become uint8)."""
    if not isinstance(x, Tensor):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - torchvision brings Pillow
            Image = None  # noqa: N806
        if Image is not None and isinstance(x, Image.Image):
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(x)
        raise UserError(f"{where}'s images are {type(x).__name__}; give (C, H, W) tensors or PIL "
                        "images (e.g. with transform=transforms.PILToTensor()).")
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() != 3:
        raise UserError(f"{where}'s images have shape {tuple(x.shape)}; give (C, H, W) tensors.")
    return x


class Indexed(Dataset):
    """Items ``(image, label, index)`` of a user's Dataset of ``(image, label)``."""

    def __init__(self, dataset: Dataset, where: str) -> None:
        self.dataset, self.where = dataset, where

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise UserError(f"{self.where}'s items must be (image, label) pairs; item {i} is a "
                            f"{type(item).__name__}.")
        return _image(item[0], self.where), int(item[1]), i


def collate(items: Sequence[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    shapes = {tuple(x.shape) for x, _, _ in items}
    if len(shapes) > 1:
        raise UserError(f"{WHAT} has images of different shapes {sorted(shapes)[:2]}; resize "
                        "them to one size in the dataset's transform.")
    return (torch.stack([x for x, _, _ in items]),
            torch.tensor([y for _, y, _ in items], dtype=torch.int64),
            torch.tensor([i for _, _, i in items], dtype=torch.int64))


# --------------------------------------------------------------------- preparing batches
@dataclass
class Prepare:
    """Check, move, augment and normalise a batch (host or device tensors)."""

    device: torch.device
    mean: Tensor
    std: Tensor
    normalized: bool
    num_classes: int
    where: str
    shape: tuple[int, int, int]  # (C, H, W) of every image

    def __call__(self, x: Tensor, y: Tensor, params: tuple[Tensor, ...] | None = None,
                 index: Tensor | None = None, pad: int = 0) -> tuple[Tensor, Tensor]:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if tuple(x.shape[1:]) != self.shape:
            raise UserError(f"{self.where} has a batch of images {'x'.join(map(str, x.shape[1:]))}"
                            f" but the run's images are {'x'.join(map(str, self.shape))} "
                            "(channels x height x width); give every image one shape.")
        y = self.check_labels(torch.as_tensor(y))
        scale = 1.0 if self.normalized else pixel_scale(x, f"{self.where}'s images")
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if params is not None and index is not None:
            dy, dx, flip = (p[index.to(p.device)] for p in params)
            x = crop_flip(x, dy, dx, flip, pad)
        if self.normalized:
            return x.float(), y
        return normalise(x, self.mean, self.std, scale), y

    def check_labels(self, y: Tensor) -> Tensor:
        """``y`` as int64 class indices; a label outside ``0..num_classes-1`` is a UserError."""
        if y.is_floating_point() or y.dtype == torch.bool:
            raise UserError(f"{self.where}'s labels are {y.dtype}; give integer class indices.")
        y = y.to(torch.int64)
        bad = y[(y < 0) | (y >= self.num_classes)]
        if bad.numel():
            top = self.num_classes - 1
            raise UserError(f"{self.where} has label {int(bad[0])} outside 0..{top} "
                            f"({self.num_classes} classes); give class indices below "
                            "num_classes or pass the right num_classes.")
        return y


class DatasetLoader(EpochPlan):
    """Batches ``(images, targets, index)`` on the device from a user's Dataset, in the
    order and with the augmentation of :class:`~kdlab.data.sampling.EpochPlan`."""

    def __init__(self, dataset: Dataset, prepare: Prepare, *, n: int, batch_size: int,
                 train: bool, augment: CropFlip | None, num_workers: int, seed: int, rank: int,
                 world_size: int) -> None:
        self.dataset = Indexed(dataset, prepare.where)
        self.prepare, self.num_workers = prepare, num_workers
        self._init_plan(n, batch_size=batch_size, train=train, augment=augment, seed=seed,
                        rank=rank, world_size=world_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order, params = self._plan()
        b = self.batch_size
        batches = [order[i * b:(i + 1) * b].tolist() for i in range(len(self))]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=collate,
                            pin_memory=self.prepare.device.type == "cuda")
        pad = self.augment.pad if self.augment is not None else 0
        for x, y, index in loader:
            x, y = self.prepare(x, y, params, index, pad)
            yield x, y, index.to(self.prepare.device)


class WrappedLoader:
    """A user's DataLoader of ``(images, labels[, index])``, its batches prepared."""

    def __init__(self, loader: DataLoader, prepare: Prepare) -> None:
        self.loader, self.prepare = loader, prepare
        self.num_workers = loader.num_workers  # the user's choice (kdlab.runtime.threads)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        for sampler in (self.loader.sampler, self.loader.batch_sampler):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError(f"{self.prepare.where}'s DataLoader must yield (images, labels) "
                                f"batches; it yields {type(batch).__name__}.")
            x, y = self.prepare(batch[0], batch[1])
            if len(batch) > 2 and isinstance(batch[2], Tensor):
                yield x, y, batch[2].to(self.prepare.device)
            else:
                yield x, y


# --------------------------------------------------------------------- the source
def _first_image(split: Split) -> Tensor:
    if split.kind == "tensors":
        return split.obj[0][0]
    if split.kind == "dataset":
        return Indexed(split.obj, split.where)[0][0]
    batch = next(iter(split.obj), None)
    if batch is None:
        raise UserError(f"{split.where}'s DataLoader yields no batch; give it data.")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not isinstance(batch[0], Tensor):
        raise UserError(f"{split.where}'s DataLoader must yield (images, labels) batches of "
                        f"tensors; it yields {type(batch).__name__}.")
    x = batch[0]
    return x[0] if x.dim() == 4 else x[0].unsqueeze(0)


def _shape(split: Split) -> tuple[int, int, int]:
    """``(C, H, W)`` of a split's first image."""
    image = _first_image(split)
    if image.dim() != 3:
        raise UserError(f"{split.where}'s images have shape {tuple(image.shape)}; give (C, H, "
                        "W) images.")
    c, h, w = (int(v) for v in image.shape)
    return c, h, w


class MemoryData(DatasetSource):
    """Train and validation splits given in memory, built like a registered dataset.

    ``shape`` is the first training image's ``(C, H, W)``; ``num_classes`` (set with
    :meth:`set_num_classes` once the networks are known) completes :attr:`info`.
    """

    def __init__(self, train: Any, val: Any) -> None:
        self.train, self.val = as_split(train, "train"), as_split(val, "val")
        self.shape = _shape(self.train)
        val_shape = _shape(self.val)
        if val_shape != self.shape:
            raise UserError(f"val's images are {'x'.join(map(str, val_shape))} (channels x "
                            f"height x width) but train's are {'x'.join(map(str, self.shape))}; "
                            "give both splits images of one shape.")
        kind = self.train.kind
        self.name = "memory:" + ("tensors" if kind == "tensors" else type(train).__name__
                                 if kind == "dataset" else "DataLoader")
        self.set_num_classes(None, required=False)

    def set_num_classes(self, num_classes: int | None, *, required: bool = True) -> None:
        """Complete :attr:`info`; without ``num_classes`` it comes from the data (a Dataset's
        ``classes``, the largest tensor label + 1) or, when ``required``, is a UserError."""
        if num_classes is None:
            num_classes = self._num_classes(required)
        c, h, _ = self.shape
        self.info = DatasetInfo(  # type: ignore[misc] - an instance's own info
            name=self.name, num_classes=int(num_classes), in_channels=c, input_size=h,
            train_size=len(self.train), val_size=len(self.val), mean=(0.0,) * c,
            std=(1.0,) * c)

    def _num_classes(self, required: bool) -> int:
        obj = self.train.obj.dataset if self.train.kind == "loader" else self.train.obj
        classes = getattr(obj, "classes", None)
        if classes is not None:
            return len(classes)
        if self.train.kind == "tensors":
            return int(self.train.obj[1].max()) + 1
        if not required:
            return 0
        raise UserError("kdlab cannot tell the number of classes of this data; pass "
                        "num_classes=... (or a network given as a module, whose outputs say).")

    def measure(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images on the [0, 1] scale (all of a
        tensor, the first :data:`MEASURED` images of a Dataset or DataLoader), rounded to 6
        digits so that the config records them exactly."""
        x = self._sample()
        scale = pixel_scale(x, "train's images")
        sums = torch.zeros(2, x.shape[1], dtype=torch.float64)
        for chunk in x.split(4096):  # a whole training tensor need not be copied as float
            c = chunk.double() / scale
            sums += torch.stack([c.sum(dim=(0, 2, 3)), c.pow(2).sum(dim=(0, 2, 3))])
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = sums[0] / count
        std = (sums[1] / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

    def _sample(self) -> Tensor:
        if self.train.kind == "tensors":
            return self.train.obj[0]
        if self.train.kind == "dataset":
            ds = Indexed(self.train.obj, "train")
            n = min(len(ds), MEASURED)
            return collate([ds[i] for i in range(n)])[0]
        parts, seen = [], 0
        for batch in self.train.obj:
            parts.append(batch[0] if batch[0].dim() == 4 else batch[0].unsqueeze(1))
            seen += parts[-1].shape[0]
            if seen >= MEASURED:
                break
        return torch.cat(parts)

    def build(self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int,
              world_size: int) -> Loaders:
        c = self.info.in_channels
        if cfg.normalized:
            mean, std = [0.0] * c, [1.0] * c
        else:
            if cfg.mean is None or cfg.std is None:
                raise ValueError("data.mean and data.std must be set (kdlab.distill measures "
                                 "them)")
            mean, std = list(cfg.mean), list(cfg.std)
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise UserError(f"data.mean and data.std need one value per channel ({c}) and a "
                            f"positive std; got {mean} and {std}.")
        augment = CropFlip(pad=max(1, self.shape[1] // 8), flip=True) if cfg.augment else None
        common = dict(seed=seed, rank=rank, world_size=world_size)
        loaders = []
        for split, train in ((self.train, True), (self.val, False)):
            subset = cfg.train_subset if train else cfg.val_subset
            batch = cfg.batch_size if train else cfg.eval_batch_size
            prepare = Prepare(torch.device(device), torch.tensor(mean, device=device),
                              torch.tensor(std, device=device), cfg.normalized,
                              self.info.num_classes, split.where, self.shape)
            loaders.append(self._loader(split, prepare, cfg, subset=subset, batch=batch,
                                        train=train, augment=augment if train else None,
                                        **common))
        n_train = subset_size(len(self.train), cfg.train_subset)
        if self.train.kind != "loader":
            check_batches(len(loaders[0]), cfg, n_train, world_size)
        info = dataclasses.replace(self.info, mean=tuple(mean), std=tuple(std),
                                   train_size=n_train,
                                   val_size=subset_size(len(self.val), cfg.val_subset))
        return Loaders(train=loaders[0], val=loaders[1], info=info)

    def _loader(self, split: Split, prepare: Prepare, cfg: DataConfig, *, subset: int | None,
                batch: int, train: bool, augment: CropFlip | None, seed: int, rank: int,
                world_size: int) -> Any:
        if split.kind == "loader":
            if subset is not None or (train and augment is not None) or world_size > 1:
                raise UserError(f"{split.where} is a DataLoader, which kdlab uses as it is: leave "
                                "data.train_subset / val_subset and data.augment unset and run "
                                "one process, or pass its Dataset instead.")
            return WrappedLoader(split.obj, prepare)
        n = subset_size(len(split), subset)
        if split.kind == "dataset":
            return DatasetLoader(split.obj, prepare, n=n, batch_size=batch, train=train,
                                 augment=augment, num_workers=cfg.num_workers, seed=seed,
                                 rank=rank, world_size=world_size)
        images, labels = split.obj
        images, labels = images[:n], prepare.check_labels(labels[:n])  # checked once
        scale = 1.0 if cfg.normalized else pixel_scale(images, f"{split.where}'s images")
        store = prepare.device if cfg.device_resident is not False else torch.device("cpu")
        return TensorLoader(images.to(store), labels.to(store), batch_size=batch,
                            device=prepare.device, mean=prepare.mean.tolist(),
                            std=prepare.std.tolist(),
                            train=train, augment=augment, scale=scale, seed=seed, rank=rank,
                            world_size=world_size)

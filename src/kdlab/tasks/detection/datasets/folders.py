"""Detection datasets read from disk: COCO and Pascal VOC, through torchvision's datasets.

- ``coco``: torchvision's ``CocoDetection`` layout, ``data.root`` holding ``train2017/``,
  ``val2017/`` and ``annotations/instances_{train,val}2017.json``. Labels are COCO's category
  ids (1..90, so K = 90 as torchvision's COCO checkpoints; 80 of them occur); targets also
  carry ``area`` and ``iscrowd`` for the official evaluation. Training images without any
  annotation are left out (Detectron2's ``FILTER_EMPTY_ANNOTATIONS``).
- ``voc2007`` (trainval -> test) and ``voc2012`` (train -> val): torchvision's
  ``VOCDetection`` under ``data.root`` (``VOCdevkit/VOC20xx``); labels 1..20 in torchvision's
  VOC class order. Evaluated with the same COCO metrics (``difficult`` objects count).

Images keep their size: the detector's own transform resizes them (see
:mod:`kdlab.tasks.detection.models.builders`). Training flips horizontally (p = 0.5); boxes follow
every image transform because they are ``tv_tensors.BoundingBoxes`` through
``torchvision.transforms.v2`` (:func:`detection_transforms`, which can also resize). Workers
return uint8 images; normalisation (ImageNet mean / std, or ``data.pixel_mean`` /
``pixel_std`` / ``channel_order`` as for segmentation folders,
:mod:`kdlab.data.input_normalisation`; ``[0, 0, 0]`` / ``[1, 1, 1]`` hands raw 0..255 RGB
pixels to detectors that normalise themselves, as Detectron2's do) happens on the device.
Batches are ``(list of (C, H, W) float images, list of target dicts, int64 dataset
indices)``, all on the device. Order and augmentation are functions of ``(seed, epoch)`` as
for image folders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdlab.core.config import DataConfig
from kdlab.data.base import DATASETS, DatasetInfo, DatasetSource, Loaders
from kdlab.data.input_normalisation import input_normalisation
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.sampling import epoch_seed, val_shard
from kdlab.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGET_KEYS = ("boxes", "labels", "area", "iscrowd")


def detection_transforms(train: bool, augment: bool, resize: tuple[int, int] | None = None) -> Any:
    """``torchvision.transforms.v2`` for (image, target) pairs: an optional resize (shorter
    side, longest side), a horizontal flip when training with augmentation, uint8 tensors."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage()]
    if resize is not None:
        steps.append(v2.Resize(resize[0], max_size=resize[1], antialias=True))
    if train and augment:
        steps.append(v2.RandomHorizontalFlip(0.5))
    steps.append(v2.ToDtype(torch.uint8, scale=True))
    return v2.Compose(steps)


def _plain_target(target: dict[str, Any], area_scale: float) -> dict[str, Tensor]:
    """Plain tensors (boxes float32 xyxy, labels int64, area, iscrowd) from a wrapped target."""
    boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4))).as_subclass(Tensor)
    out = {"boxes": boxes.float().reshape(-1, 4),
           "labels": torch.as_tensor(target.get("labels", torch.zeros(0)), dtype=torch.int64)}
    if "area" in target:
        out["area"] = torch.as_tensor(target["area"], dtype=torch.float32) * area_scale
    if "iscrowd" in target:
        out["iscrowd"] = torch.as_tensor(target["iscrowd"], dtype=torch.int64)
    return out


class IndexedDetection(Dataset):
    """``(uint8 image, target dict, index)`` of a v2-wrapped torchvision detection dataset.

    Each item's transform runs under a torch RNG seeded from (seed, epoch, index).
    """

    def __init__(self, dataset: Any, size: int, transform: Any, seed: int) -> None:
        self.dataset, self.size, self.transform, self.seed = dataset, size, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], int]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import get_size

        image, target = self.dataset[index]
        if "boxes" not in target:  # an image without annotations
            h, w = get_size(image)
            target = {**target, "boxes": tv_tensors.BoundingBoxes(
                torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                "labels": torch.zeros(0, dtype=torch.int64)}
        before = get_size(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, self.epoch, stream=index + 1))
            image, target = self.transform(image, target)
        after = image.shape[-2:]
        scale = (after[0] * after[1]) / max(before[0] * before[1], 1)
        return image, _plain_target(target, scale), index


def collate(batch: list[tuple[Tensor, dict[str, Tensor], int]]) -> tuple[list, list, Tensor]:
    """Lists of images and targets (sizes differ) and the index tensor."""
    images, targets, index = zip(*batch)
    return list(images), list(targets), torch.tensor(index, dtype=torch.int64)


class DetectionLoader:
    """A ``DataLoader`` over an :class:`IndexedDetection` yielding normalised images (a list)
    and targets on the device."""

    def __init__(self, dataset: IndexedDetection, sampler: Any, *, batch_size: int, train: bool,
                 device: torch.device, num_workers: int, mean: Sequence[float],
                 std: Sequence[float], scale: float = 255.0, bgr: bool = False) -> None:
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self.scale, self.bgr = scale, bgr
        self.num_workers = num_workers  # processes that decode files (kdlab.runtime.threads)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                 num_workers=num_workers, drop_last=train, collate_fn=collate,
                                 pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]], Tensor]]:
        for images, targets, index in self.loader:
            images = [im.to(self.device, non_blocking=True).float() for im in images]
            images = [((im.flip(0) if self.bgr else im) / self.scale - self.mean) / self.std
                      for im in images]
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()}
                       for t in targets]
            yield images, targets, index.to(self.device)


class DetectionFolders(DatasetSource):
    """A detection dataset on disk; subclasses open the two splits (:meth:`open`)."""

    def open(self, root: Path, train: bool) -> Any:
        """The torchvision dataset of one split, wrapped for transforms v2."""
        raise NotImplementedError

    def build(self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int,
              world_size: int) -> Loaders:
        if cfg.device_resident:
            raise UserError(f"{self.info.name} is read from disk by workers; set "
                            "data.device_resident to null or false.")
        if not cfg.root:
            raise UserError(f"Set data.root to the {self.info.name} folder; it cannot be "
                            "downloaded automatically.")
        root = Path(cfg.root).expanduser()
        train_set, val_set = self.open(root, True), self.open(root, False)
        nt, nv = subset_size(len(train_set), cfg.train_subset), subset_size(len(val_set),
                                                                            cfg.val_subset)
        train_data = IndexedDetection(train_set, nt, detection_transforms(True, cfg.augment),
                                      seed)
        val_data = IndexedDetection(val_set, nv, detection_transforms(False, False), seed)
        mean, std, scale, bgr = input_normalisation(cfg, self.info.mean, self.info.std)
        common = dict(device=device, num_workers=cfg.num_workers, mean=mean, std=std,
                      scale=scale, bgr=bgr)
        sampler = DistributedSampler(train_data, num_replicas=world_size, rank=rank,
                                     shuffle=True, seed=seed)
        train = DetectionLoader(train_data, sampler, batch_size=cfg.batch_size, train=True,
                                **common)
        val = DetectionLoader(val_data, val_shard(nv, rank, world_size).tolist(),
                              batch_size=cfg.eval_batch_size, train=False, **common)
        check_batches(len(train), cfg, nt, world_size)
        info = dataclasses.replace(self.info, train_size=nt, val_size=nv)
        return Loaders(train=train, val=val, info=info)


def _wrap(dataset: Any, keys: tuple[str, ...]) -> Any:
    from torchvision.datasets import wrap_dataset_for_transforms_v2

    return wrap_dataset_for_transforms_v2(dataset, target_keys=set(keys))


@DATASETS.register("coco")
class Coco(DetectionFolders):
    """COCO 2017 detection (train2017 -> val2017), torchvision's CocoDetection layout."""

    info = DatasetInfo(name="coco", num_classes=90, in_channels=3, input_size=800,
                       train_size=117266, val_size=5000, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       task="detection")

    def open(self, root: Path, train: bool) -> Any:
        from torchvision.datasets import CocoDetection

        split = "train2017" if train else "val2017"
        images, ann = root / split, root / "annotations" / f"instances_{split}.json"
        if not images.is_dir() or not ann.is_file():
            raise UserError(f"COCO split {split} is not under {str(root)!r}: it needs "
                            f"{split}/ and annotations/instances_{split}.json.")
        try:
            dataset = CocoDetection(str(images), str(ann))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{str(ann)!r} is not a readable COCO instances file ({err}).") \
                from None
        if train:  # Detectron2's FILTER_EMPTY_ANNOTATIONS
            coco = dataset.coco
            dataset.ids = [i for i in dataset.ids if coco.getAnnIds(imgIds=i, iscrowd=False)]
        return _wrap(dataset, TARGET_KEYS)


class _Voc(DetectionFolders):
    year: str
    splits: tuple[str, str]

    def open(self, root: Path, train: bool) -> Any:
        from torchvision.datasets import VOCDetection

        split = self.splits[0 if train else 1]
        try:
            dataset = VOCDetection(str(root), year=self.year, image_set=split, download=False)
        except (OSError, RuntimeError, ValueError) as err:
            raise UserError(f"Pascal VOC {self.year} {split} is not under {str(root)!r} ({err}); "
                            f"set data.root to the folder holding VOCdevkit/VOC{self.year}.") \
                from None
        return _wrap(dataset, ("boxes", "labels"))


@DATASETS.register("voc2007")
class Voc2007(_Voc):
    """Pascal VOC 2007 detection: trainval -> test."""

    year, splits = "2007", ("trainval", "test")
    info = DatasetInfo(name="voc2007", num_classes=20, in_channels=3, input_size=800,
                       train_size=5011, val_size=4952, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       task="detection")


@DATASETS.register("voc2012")
class Voc2012(_Voc):
    """Pascal VOC 2012 detection: train -> val."""

    year, splits = "2012", ("train", "val")
    info = DatasetInfo(name="voc2012", num_classes=20, in_channels=3, input_size=800,
                       train_size=5717, val_size=5823, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       task="detection")

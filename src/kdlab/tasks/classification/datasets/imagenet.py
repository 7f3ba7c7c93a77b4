"""ImageNet-style image folders (``root/train/<class>/*``, ``root/val/<class>/*``).

Read with torchvision's ``ImageFolder`` and decoded by a torch ``DataLoader`` with workers.
Augmentation is the standard ImageNet recipe (He et al., CVPR 2016; torchvision references):
train ``RandomResizedCrop(224)`` + horizontal flip, validation ``Resize(256)`` +
``CenterCrop(224)``. Workers return uint8 tensors; normalisation happens on the device.

Determinism: the training order is ``DistributedSampler(seed=seed).set_epoch(epoch)``, and
each sample's augmentation runs under a torch RNG seeded from ``(seed, epoch, index)``, so the
batches are a function of ``(seed, epoch)`` whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from kdlab.core.config import DataConfig
from kdlab.data.base import DATASETS, DatasetInfo, DatasetSource, Loaders
from kdlab.data.folder_loader import FolderLoader
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.sampling import epoch_seed, val_shard
from kdlab.errors import UserError

CROP, RESIZE = 224, 256


def transforms(train: bool, augment: bool) -> Any:
    from torchvision.transforms import v2

    if train and augment:
        steps = [v2.RandomResizedCrop(CROP, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(RESIZE, antialias=True), v2.CenterCrop(CROP)]
    return v2.Compose([*steps, v2.PILToTensor()])


class IndexedFolder(Dataset):
    """``(uint8 image, target, index)`` for the first ``size`` items of an ImageFolder.

    Each item's transform runs under a forked torch RNG seeded from (seed, epoch, index).
    """

    def __init__(self, folder: Any, size: int, transform: Any, seed: int) -> None:
        self.folder, self.size, self.transform, self.seed = folder, size, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, target = self.folder[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, self.epoch, stream=index + 1))
            image = self.transform(image)
        return image, target, index


def open_folder(path: Path) -> Any:
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise UserError(f"Image folder {str(path)!r} does not exist; set data.root to a folder "
                        "with train/ and val/ subfolders of one folder per class.")
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"{str(path)!r} is not a usable image folder ({e}); put each class's "
                        "images in its own subfolder.") from None


@DATASETS.register("imagenet")
class ImageNet(DatasetSource):
    """ImageNet-style folders root/train and root/val, 3x224x224 (RandomResizedCrop + flip)."""

    info = DatasetInfo(name="imagenet", num_classes=1000, in_channels=3, input_size=CROP,
                       train_size=1281167, val_size=50000, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225))

    def build(
        self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int, world_size: int
    ) -> Loaders:
        if cfg.device_resident:
            raise UserError("ImageNet-style folders are read from disk by workers; set "
                            "data.device_resident to null or false.")
        if not cfg.root:
            raise UserError("Set data.root to the ImageNet folder (with train/ and val/ "
                            "subfolders); it cannot be downloaded automatically.")
        root = Path(cfg.root).expanduser()
        train_folder, val_folder = open_folder(root / "train"), open_folder(root / "val")
        if train_folder.classes != val_folder.classes:
            raise UserError(f"{str(root / 'train')!r} and {str(root / 'val')!r} have different "
                            "class folders; give both the same classes.")
        nt = subset_size(len(train_folder), cfg.train_subset)
        nv = subset_size(len(val_folder), cfg.val_subset)
        train_set = IndexedFolder(train_folder, nt, transforms(True, cfg.augment), seed)
        val_set = IndexedFolder(val_folder, nv, transforms(False, False), seed)
        common = dict(device=device, num_workers=cfg.num_workers, mean=self.info.mean,
                      std=self.info.std)
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                     shuffle=True, seed=seed)
        train = FolderLoader(train_set, sampler, batch_size=cfg.batch_size, train=True, **common)
        val = FolderLoader(val_set, val_shard(nv, rank, world_size).tolist(),
                           batch_size=cfg.eval_batch_size, train=False, **common)
        check_batches(len(train), cfg, nt, world_size)
        info = dataclasses.replace(self.info, num_classes=len(train_folder.classes),
                                   train_size=nt, val_size=nv)
        return Loaders(train=train, val=val, info=info)

"""Segmentation datasets read from disk: (image, label map) file pairs, joint transforms, workers.

Each registered dataset (:mod:`.voc`, :mod:`.cityscapes`, :mod:`.ade20k`) lists its
``(image path, label path)`` pairs and a lookup table that maps the stored label values to
training ids (255 = ignore). Decoding and augmentation run in ``DataLoader`` workers with
``torchvision.transforms.v2``, the label map wrapped as a ``tv_tensors.Mask`` so it follows the
image exactly (nearest-neighbour resizing, the same crop and flip):

* training: random resize of the shorter side to ``base_size * s``, ``s`` uniform in
  ``scale`` (0.5 to 2 in DeepLab / PSPNet / CIRKD), random ``crop`` (padded with 0 and the
  ignore index where the image is smaller), horizontal flip; or, with ``data.scales``, the
  dilated-network codes' discrete scales of the whole image, bottom/right padding and crop
  (:mod:`.scale_crop`);
* validation: the whole image (batches are padded to their largest image, the label maps
  with the ignore index, so padding never counts).

Images come out uint8 and are normalised on the device (:func:`input_normalisation`: the
dataset's RGB mean / std, or ``data.channel_order`` / ``pixel_mean`` / ``pixel_std``); label
maps int64. Determinism as in
:mod:`kdlab.tasks.classification.datasets.imagenet`: each sample's transform runs under a
torch RNG seeded from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from kdlab.core.config import DataConfig
from kdlab.data.base import DatasetSource, Loaders
from kdlab.data.folder_loader import FolderLoader
from kdlab.data.input_normalisation import input_normalisation
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.sampling import epoch_seed, val_shard
from kdlab.errors import UserError
from kdlab.tasks.segmentation.datasets.scale_crop import ScaleCropFlip, fill_padding

IGNORE = 255
Pairs = list[tuple[str, str]]


def lookup(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A uint8 table: stored label value -> training id, 255 for every value not in ``mapping``."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


def joint_transforms(train: bool, crop: tuple[int, int], base_size: int,
                     scale: tuple[float, float]) -> Any:
    """The v2 pipeline applied to ``(tv_tensors.Image, tv_tensors.Mask)``."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if not train:
        return v2.Identity()
    lo, hi = int(base_size * scale[0]), int(base_size * scale[1])
    return v2.Compose([
        v2.RandomResize(lo, max(hi, lo + 1), antialias=True),
        v2.RandomCrop(crop, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
        v2.RandomHorizontalFlip(),
    ])


class SegPairs(Dataset):
    """``(uint8 image (C, H, W), int64 labels (H, W), index)`` for file pairs, transformed
    under a torch RNG seeded from ``(seed, epoch, index)``."""

    def __init__(self, pairs: Pairs, table: np.ndarray, transform: Any, seed: int) -> None:
        self.pairs, self.table, self.transform, self.seed = pairs, table, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        with Image.open(label_path) as lab:
            raw = np.array(lab)
        if raw.ndim != 2 or raw.shape != tuple(image.shape[1:]):
            raise UserError(f"The label map {label_path!r} ({raw.shape}) does not match its "
                            f"image {image_path!r} ({tuple(image.shape[1:])}); replace it.")
        labels = torch.from_numpy(self.table[raw.astype(np.int64).clip(0, len(self.table) - 1)])
        return image, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        from torchvision import tv_tensors

        image, labels = self.read(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, self.epoch, stream=index + 1))
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(labels))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long(), index


def train_transform(cfg: DataConfig, crop: tuple[int, int], base_size: int,
                    scale: tuple[float, float]) -> Any:
    """The training pipeline: ``data.scales`` (discrete whole-image factors,
    :class:`~.scale_crop.ScaleCropFlip`) or the dataset's random resize
    (:func:`joint_transforms`)."""
    if cfg.scales is None:
        if cfg.pad != "zero":
            raise UserError("data.pad=mean pads the discrete-scale pipeline; give data.scales "
                            "(e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]) or drop data.pad.")
        return joint_transforms(cfg.augment, crop, base_size, scale)
    if not cfg.scales:
        raise UserError("data.scales is empty; list the scale factors or set it to null.")
    if not cfg.augment:
        return joint_transforms(False, crop, base_size, scale)
    return ScaleCropFlip(crop, cfg.scales, ignore=IGNORE, pad=cfg.pad)


def _crop(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        raise UserError(f"data.crop must be [height, width], got {list(size)}.")
    return int(size[0]), int(size[1])


def pad_collate(fill: Sequence[int]):
    """Collate samples of different sizes: pad each to the largest, images with ``fill`` per
    channel (the mean, so normalised padding is about 0), label maps with the ignore index."""

    def collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
        h = max(x.shape[1] for x, _, _ in batch)
        w = max(x.shape[2] for x, _, _ in batch)
        images = torch.stack([x.new_tensor(fill).view(-1, 1, 1).expand(-1, h, w).clone()
                              for x, _, _ in batch])
        labels = torch.full((len(batch), h, w), IGNORE, dtype=torch.int64)
        for i, (x, y, _) in enumerate(batch):
            images[i, :, :x.shape[1], :x.shape[2]] = x
            labels[i, :y.shape[0], :y.shape[1]] = y
        return images, labels, torch.tensor([i for _, _, i in batch])

    return collate


class SegFolderSource(DatasetSource):
    """A segmentation dataset on disk; subclasses implement :meth:`pairs` and set the table,
    the crop and the base size of the random resize."""

    table: ClassVar[np.ndarray]
    input_settings = True
    crop: ClassVar[tuple[int, int]] = (512, 512)
    base_size: ClassVar[int] = 512
    scale: ClassVar[tuple[float, float]] = (0.5, 2.0)

    def pairs(self, cfg: DataConfig, train: bool) -> Pairs:
        raise NotImplementedError

    def build(
        self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int, world_size: int
    ) -> Loaders:
        if cfg.device_resident:
            raise UserError(f"{self.info.name} is read from disk by workers; set "
                            "data.device_resident to null or false.")
        train_pairs, val_pairs = self.pairs(cfg, True), self.pairs(cfg, False)
        nt = subset_size(len(train_pairs), cfg.train_subset)
        nv = subset_size(len(val_pairs), cfg.val_subset)
        crop = self.crop if cfg.crop is None else _crop(cfg.crop)
        train_set = SegPairs(train_pairs[:nt], self.table,
                             train_transform(cfg, crop, self.base_size, self.scale), seed)
        val_set = SegPairs(val_pairs[:nv], self.table, joint_transforms(False, self.crop, 0,
                                                                        self.scale), seed)
        mean, std, scale, bgr = input_normalisation(cfg, self.info.mean, self.info.std)
        # validation batches of unequal images are padded with the mean colour (RGB, uint8)
        rgb_mean = mean[::-1] if bgr else mean
        fill = [round(m if scale == 1.0 else 255 * m) for m in rgb_mean]
        common = dict(device=device, num_workers=cfg.num_workers, mean=mean, std=std,
                      scale=scale, bgr=bgr, collate_fn=pad_collate(fill))
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                     shuffle=True, seed=seed)
        finish = (partial(fill_padding, ignore=IGNORE)
                  if cfg.scales is not None and cfg.pad == "mean" else None)
        train = FolderLoader(train_set, sampler, batch_size=cfg.batch_size, train=True,
                             finish=finish, **common)
        val = FolderLoader(val_set, val_shard(nv, rank, world_size).tolist(),
                           batch_size=cfg.eval_batch_size, train=False, **common)
        check_batches(len(train), cfg, nt, world_size)
        info = dataclasses.replace(self.info, train_size=nt, val_size=nv)
        return Loaders(train=train, val=val, info=info)


def root_of(cfg: DataConfig, name: str, layout: str) -> Path:
    """``data.root`` as a path, or a UserError describing the expected layout."""
    if not cfg.root:
        raise UserError(f"Set data.root to the {name} folder ({layout}).")
    return Path(cfg.root).expanduser()


def missing(name: str, root: Path, layout: str, reason: str = "") -> UserError:
    why = f" ({reason})" if reason else ""
    return UserError(f"{name} was not found in {str(root)!r}{why}; set data.root to the folder "
                     f"that holds {layout}.")


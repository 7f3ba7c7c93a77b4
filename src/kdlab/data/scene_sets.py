"""Fashion-MNIST scenes (:mod:`kdlab.data.scenes`) as registered datasets (``scenes_seg`` of the
segmentation task, ``scenes_det`` of detection), held on the device and augmented there.

Settings (``data.*``): ``canvas`` (side in pixels, default 64), ``scenes_train`` /
``scenes_val`` (scenes per split, default 10000 / 2000; ``train_subset`` / ``val_subset``
then take the first N of them). The Fashion-MNIST files are found as for ``fashion_mnist``
(``data.root``, the Debian package, the download cache); the generated scenes are cached in
``<data.root or ~/.cache/kdlab>/scenes``.

Augmentation (training only): random crop of the canvas from the canvas zero-padded by
``canvas // 16`` pixels, and a horizontal flip (every garment class keeps its label when
mirrored); the label map is padded with the ignore index, boxes follow and are clipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from kdlab.core.config import DataConfig
from kdlab.core.settings import check_settings
from kdlab.data import fashion_mnist as fm
from kdlab.data.base import DatasetSource, Loaders
from kdlab.data.dense_augment import JointCropFlip
from kdlab.data.dense_loader import DenseTensorLoader
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.scenes import CHUNK, MAX_ITEMS, SceneSet, SceneSpec, cached_scenes
from kdlab.errors import UserError
from kdlab.runtime.capacity import physical_memory, size_text

IGNORE_INDEX = 255
#: per-pixel mean / std of the default scenes (64 x 64, 10000 training scenes), 0..1 scale
MEAN, STD = (0.206,), (0.287,)
#: the name of each label of the scenes' masks and boxes (0 = background, 1 + c = class c)
SCENE_CLASSES = ("background", *fm.CLASS_NAMES)


def size_drivers(cfg: DataConfig) -> list[tuple[str, str, float]]:
    """``(setting, its value in words, its factor on the memory against the default)`` for
    the settings that size the scenes, largest factor first."""
    d = DataConfig()
    drivers = [("data.canvas", f"{cfg.canvas}x{cfg.canvas}-pixel scenes",
                (cfg.canvas / d.canvas) ** 2),
               ("data.scenes_train", f"{cfg.scenes_train} training scenes",
                cfg.scenes_train / d.scenes_train),
               ("data.scenes_val", f"{cfg.scenes_val} validation scenes",
                cfg.scenes_val / d.scenes_val)]
    return sorted(drivers, key=lambda x: -x[2])


def footprint(cfg: DataConfig) -> int:
    """Bytes of memory that generating and holding the scenes of ``cfg`` needs: both splits
    (image and label map, boxes) twice over (the chunks and their concatenation), plus one
    chunk's working tensors."""
    per_scene = 2 * cfg.canvas ** 2 + MAX_ITEMS * (4 * 4 + 8) + 8
    return 2 * (cfg.scenes_train + cfg.scenes_val) * per_scene + CHUNK * cfg.canvas ** 2 * 24


def check_sizes(cfg: DataConfig) -> None:
    """Refuse scene sizes outside their fields' ranges (:func:`~kdlab.core.settings.
    check_settings`) or that this machine cannot hold, before anything is generated."""
    check_settings(cfg, "data")
    need, ram = footprint(cfg), physical_memory()
    if ram is None or need <= ram:
        return
    setting, words, _ = size_drivers(cfg)[0]
    default = getattr(DataConfig(), setting.split(".")[1])
    raise UserError(f"{words} ({setting}={getattr(cfg, setting.split('.')[1])}) need about "
                    f"{size_text(need)} of memory to generate and hold, and this machine has "
                    f"{size_text(ram)}; lower {setting} (default {default}).")


def load_scenes(cfg: DataConfig) -> tuple[SceneSet, SceneSet]:
    """The training and validation scenes of ``cfg`` (generated on first use, then cached)."""
    check_sizes(cfg)
    (xt, yt), (xv, yv) = fm.load_folder(fm.locate(cfg.root, cfg.download))
    spec = SceneSpec(canvas=cfg.canvas)
    folder = (Path(cfg.root).expanduser() if cfg.root else fm.CACHE_DIR) / "scenes"
    return (cached_scenes(folder, xt, yt, cfg.scenes_train, spec, "train"),
            cached_scenes(folder, xv, yv, cfg.scenes_val, spec, "val"))


class ScenesSource(DatasetSource):
    """Shared build: device-resident :class:`DenseTensorLoader` s of one target kind."""

    kind: ClassVar[str]
    #: random scale range of the training augmentation ((1, 1): none; items keep their size)
    scale: ClassVar[tuple[float, float]] = (1.0, 1.0)

    @classmethod
    def check_sizes(cls, cfg: DataConfig) -> None:
        check_sizes(cfg)

    @classmethod
    def memory_setting(cls, cfg: DataConfig) -> str | None:
        setting, _, factor = size_drivers(cfg)[0]
        return setting if factor > 1 else None

    def build(
        self, cfg: DataConfig, device: torch.device, *, seed: int, rank: int, world_size: int
    ) -> Loaders:
        train_set, val_set = load_scenes(cfg)
        nt = subset_size(len(train_set), cfg.train_subset)
        nv = subset_size(len(val_set), cfg.val_subset)
        store = torch.device(device) if cfg.device_resident is not False else torch.device("cpu")
        augment = JointCropFlip(pad=max(cfg.canvas // 16, 1), flip=True, scale=self.scale)
        common = dict(kind=self.kind, device=device, mean=self.info.mean, std=self.info.std,
                      ignore_index=IGNORE_INDEX, seed=seed, rank=rank, world_size=world_size)

        def loader(s: SceneSet, n: int, train: bool) -> DenseTensorLoader:
            targets = ({"masks": s.masks[:n].to(store)} if self.kind == "mask" else
                       {"boxes": s.boxes[:n].to(store), "box_labels": s.labels[:n].to(store)})
            return DenseTensorLoader(
                s.images[:n].to(store), **targets, train=train,
                batch_size=cfg.batch_size if train else cfg.eval_batch_size,
                augment=augment if train and cfg.augment else None, **common)

        train, val = loader(train_set, nt, True), loader(val_set, nv, False)
        check_batches(len(train), cfg, nt, world_size)
        info = dataclasses.replace(self.info, train_size=nt, val_size=nv, input_size=cfg.canvas)
        return Loaders(train=train, val=val, info=info)

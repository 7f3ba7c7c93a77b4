"""``scenes_seg`` and ``scenes_det``: Fashion-MNIST scenes (:mod:`kdlab.data.scenes`) as
registered datasets, held on the device and augmented there.

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

from kdlab.config import DataConfig
from kdlab.data import fashion_mnist as fm
from kdlab.data.base import DATASETS, DatasetInfo, DatasetSource, Loaders
from kdlab.data.dense_augment import JointCropFlip
from kdlab.data.dense_loader import DenseTensorLoader
from kdlab.data.loaders import check_batches, subset_size
from kdlab.data.scenes import SceneSet, SceneSpec, cached_scenes
from kdlab.errors import UserError

IGNORE_INDEX = 255
#: per-pixel mean / std of the default scenes (64 x 64, 10000 training scenes), 0..1 scale
MEAN, STD = (0.206,), (0.287,)
#: the name of each label of the scenes' masks and boxes (0 = background, 1 + c = class c)
SCENE_CLASSES = ("background", *fm.CLASS_NAMES)


def load_scenes(cfg: DataConfig) -> tuple[SceneSet, SceneSet]:
    """The training and validation scenes of ``cfg`` (generated on first use, then cached)."""
    for key in ("scenes_train", "scenes_val"):
        if getattr(cfg, key) < 1:
            raise UserError(f"data.{key} must be at least 1, got {getattr(cfg, key)}.")
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


@DATASETS.register("scenes_seg")
class ScenesSeg(ScenesSource):
    """Fashion-MNIST scenes (generated), 1x64x64, 11 classes (background + 10), ignore 255.

    Label 0 is background, ``1 + c`` garment class ``c``; 10000 / 2000 scenes by default
    (``data.canvas``, ``data.scenes_train``, ``data.scenes_val``)."""

    info = DatasetInfo(name="scenes_seg", num_classes=11, in_channels=1, input_size=64,
                       train_size=10000, val_size=2000, mean=MEAN, std=STD,
                       task="segmentation", ignore_index=IGNORE_INDEX,
                       class_names=SCENE_CLASSES)
    kind = "mask"


@DATASETS.register("scenes_det")
class ScenesDet(ScenesSource):
    """Fashion-MNIST scenes (generated) with boxes, 1x64x64, 10 object classes, labels 1..10.

    ``num_classes`` counts the object classes only (background is not a class here): a
    torchvision detector is built with ``num_classes + 1`` outputs, label 0 = background."""

    info = DatasetInfo(name="scenes_det", num_classes=10, in_channels=1, input_size=64,
                       train_size=10000, val_size=2000, mean=MEAN, std=STD,
                       task="detection", class_names=SCENE_CLASSES)
    kind = "boxes"

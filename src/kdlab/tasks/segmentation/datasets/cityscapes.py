"""Cityscapes (Cordts et al., CVPR 2016) fine annotations via torchvision's ``Cityscapes``:
the 19 evaluation classes as train ids 0..18, every other label id ignored (255).

``data.root`` holds ``leftImg8bit/{train,val}`` and ``gtFine/{train,val}`` (the official
layout; it cannot be downloaded without a login). Training: 2975 images, shorter side
resized to 1024 x [0.5, 2], random 512 x 1024 crop, flip (the CIRKD protocol); validation:
the 500 whole 1024 x 2048 images.
"""

from __future__ import annotations

from kdlab.core.config import DataConfig
from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.tasks.segmentation.datasets.folders import (
    IGNORE,
    Pairs,
    SegFolderSource,
    lookup,
    missing,
    root_of,
)

LAYOUT = "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/"


def train_ids() -> dict[int, int]:
    """Label id -> train id for the 19 evaluated classes (torchvision's class table)."""
    from torchvision.datasets import Cityscapes

    return {c.id: c.train_id for c in Cityscapes.classes if 0 <= c.id and 0 <= c.train_id < 19}


@DATASETS.register("cityscapes")
class CityscapesSeg(SegFolderSource):
    """Cityscapes fine, 3 x 512 x 1024 crops, 19 classes (train ids), ignore 255."""

    info = DatasetInfo(name="cityscapes", num_classes=19, in_channels=3, input_size=512,
                       train_size=2975, val_size=500, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), task="segmentation", ignore_index=IGNORE)
    table = lookup(train_ids())
    crop = (512, 1024)
    base_size = 1024

    def pairs(self, cfg: DataConfig, train: bool) -> Pairs:
        from torchvision.datasets import Cityscapes

        root = root_of(cfg, "Cityscapes", LAYOUT)
        try:
            city = Cityscapes(str(root), split="train" if train else "val", mode="fine",
                              target_type="semantic")
        except (RuntimeError, OSError) as e:
            raise missing("Cityscapes", root, LAYOUT, str(e).splitlines()[0]) from None
        pairs = sorted(zip(city.images, (t[0] for t in city.targets)))
        if not pairs:
            raise missing("Cityscapes", root, LAYOUT, "no images")
        return pairs

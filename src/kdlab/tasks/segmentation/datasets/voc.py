"""Pascal VOC 2012 segmentation (Everingham et al., IJCV 2010) via torchvision's
``VOCSegmentation``: 21 classes (background + 20), the 255 border ignored.

``data.root`` holds ``VOCdevkit/VOC2012`` (torchvision's layout; downloaded there when
``data.download`` is true). Training uses ``ImageSets/Segmentation/train.txt`` (1464 images);
SBD's extra annotations ("trainaug", 10582 images) are not included. Validation: ``val.txt``
(1449 images), whole images. Augmentation: shorter side resized to 512 x [0.5, 2], random
512 x 512 crop, flip (CIRKD's VOC protocol).
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

LAYOUT = "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}"


@DATASETS.register("voc_seg")
class VOCSeg(SegFolderSource):
    """Pascal VOC 2012 segmentation, 3 x 512 x 512 crops, 21 classes, ignore 255."""

    info = DatasetInfo(name="voc_seg", num_classes=21, in_channels=3, input_size=512,
                       train_size=1464, val_size=1449, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), task="segmentation", ignore_index=IGNORE)
    table = lookup({k: k for k in range(21)})
    crop = (512, 512)
    base_size = 512

    def pairs(self, cfg: DataConfig, train: bool) -> Pairs:
        from torchvision.datasets import VOCSegmentation

        root = root_of(cfg, "Pascal VOC", LAYOUT)
        split = "train" if train else "val"
        try:
            try:
                voc = VOCSegmentation(str(root), year="2012", image_set=split, download=False)
            except RuntimeError:
                if not cfg.download:
                    raise
                voc = VOCSegmentation(str(root), year="2012", image_set=split, download=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise missing("Pascal VOC 2012", root, LAYOUT, str(e).splitlines()[0]) from None
        return list(zip(voc.images, voc.masks))

"""ADE20K scene parsing (Zhou et al., CVPR 2017), the ADEChallengeData2016 release: 150
classes; label 0 ("other") is ignored and labels 1..150 become 0..149.

``data.root`` holds ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/*.png`` (or is that folder itself).
Training: 20210 images, shorter side resized to 512 x [0.5, 2], random 512 x 512 crop, flip;
validation: the 2000 whole images.
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

LAYOUT = "ADEChallengeData2016/{images,annotations}/{training,validation}/"


@DATASETS.register("ade20k")
class ADE20K(SegFolderSource):
    """ADE20K (ADEChallengeData2016), 3 x 512 x 512 crops, 150 classes, 0 -> ignore 255."""

    info = DatasetInfo(name="ade20k", num_classes=150, in_channels=3, input_size=512,
                       train_size=20210, val_size=2000, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), task="segmentation", ignore_index=IGNORE)
    table = lookup({k: k - 1 for k in range(1, 151)})
    crop = (512, 512)
    base_size = 512

    def pairs(self, cfg: DataConfig, train: bool) -> Pairs:
        root = root_of(cfg, "ADE20K", LAYOUT)
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        split = "training" if train else "validation"
        images = sorted((base / "images" / split).glob("*.jpg"))
        if not images:
            raise missing("ADE20K", root, LAYOUT, f"no images/{split}/*.jpg")
        pairs = []
        for image in images:
            label = base / "annotations" / split / f"{image.stem}.png"
            if not label.is_file():
                raise missing("ADE20K", root, LAYOUT, f"no annotation for {image.name}")
            pairs.append((str(image), str(label)))
        return pairs


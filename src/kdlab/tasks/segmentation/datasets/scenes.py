"""``scenes_seg``: Fashion-MNIST scenes (:mod:`kdlab.data.scenes`) with per-pixel labels, held
on the device and augmented there (settings and augmentation: :mod:`kdlab.data.scene_sets`)."""

from __future__ import annotations

from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.scene_sets import IGNORE_INDEX, MEAN, SCENE_CLASSES, STD, ScenesSource


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

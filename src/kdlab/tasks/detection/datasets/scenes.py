"""``scenes_det``: Fashion-MNIST scenes (:mod:`kdlab.data.scenes`) with boxes, held on the
device and augmented there (settings and augmentation: :mod:`kdlab.data.scene_sets`)."""

from __future__ import annotations

from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.scene_sets import MEAN, SCENE_CLASSES, STD, ScenesSource


@DATASETS.register("scenes_det")
class ScenesDet(ScenesSource):
    """Fashion-MNIST scenes (generated) with boxes, 1x64x64, 10 object classes, labels 1..10.

    ``num_classes`` counts the object classes only (background is not a class here): a
    torchvision detector is built with ``num_classes + 1`` outputs, label 0 = background."""

    info = DatasetInfo(name="scenes_det", num_classes=10, in_channels=1, input_size=64,
                       train_size=10000, val_size=2000, mean=MEAN, std=STD,
                       task="detection", class_names=SCENE_CLASSES)
    kind = "boxes"

"""``fashion_mnist``, the embedded default dataset: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017,
arXiv:1708.07747), 28x28 grey clothing images, read from the IDX files that
:mod:`kdlab.data.fashion_mnist` finds (``data.root``, Debian's package, the download
cache)."""

from __future__ import annotations

from kdlab.core.config import DataConfig
from kdlab.data.augment import CropFlip
from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.fashion_mnist import load_folder, locate
from kdlab.data.loaders import Split, TensorSource


@DATASETS.register("fashion_mnist")
class FashionMNIST(TensorSource):
    """Fashion-MNIST, 1x28x28, 10 clothing classes, 60000 train / 10000 test (the default).

    Augmentation: random 28x28 crop of the image zero-padded by 2, and a horizontal flip. The
    items are centred and fill most of the frame, so 2 pixels (the CIFAR recipe's 4/32 scaled
    down) shift them without cutting them off; every class (shirts, bags, shoes) keeps its
    label when mirrored (a shoe pointing right is still a shoe), so the flip is safe.
    """

    info = DatasetInfo(name="fashion_mnist", num_classes=10, in_channels=1, input_size=28,
                       train_size=60000, val_size=10000, mean=(0.2860,), std=(0.3530,))
    augmentation = CropFlip(pad=2, flip=True)

    def load(self, cfg: DataConfig) -> tuple[Split, Split]:
        return load_folder(locate(cfg.root, cfg.download))

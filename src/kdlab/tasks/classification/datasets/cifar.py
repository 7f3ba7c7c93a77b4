"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) through torchvision's dataset classes.

The python pickles are read from ``data.root`` (default ``~/.cache/kdlab``), where torchvision
downloads them when ``data.download`` is true. Augmentation is the standard one of the KD
benchmarks (CRD / RepDistiller): random 32x32 crop with 4-pixel zero padding and a horizontal
flip, then per-channel normalisation; done on the device by :mod:`kdlab.data.augment`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from kdlab.core.config import DataConfig
from kdlab.data.augment import CropFlip
from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.loaders import Split, TensorSource
from kdlab.errors import UserError

CACHE_DIR = Path.home() / ".cache" / "kdlab"


def to_split(dataset) -> Split:
    """torchvision's (N, 32, 32, 3) uint8 array and label list -> NCHW uint8, int64."""
    data = np.ascontiguousarray(np.asarray(dataset.data, dtype=np.uint8))
    x = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(dataset.targets, dtype=torch.int64)


class CIFARSource(TensorSource):
    """Shared loading code; subclasses name torchvision's class."""

    tv_name: ClassVar[str]
    augmentation = CropFlip(pad=4, flip=True)

    def _open(self, root: Path, train: bool):
        import torchvision.datasets as tvd

        return getattr(tvd, self.tv_name)(root=str(root), train=train, download=False)

    def _download(self, root: Path) -> None:
        """Download and extract into a temporary folder, then move the result into ``root``."""
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.tv_name)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            cls(root=str(tmp), train=True, download=True)
            os.replace(tmp / cls.base_folder, root / cls.base_folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, cfg: DataConfig) -> tuple[Split, Split]:
        root = Path(cfg.root).expanduser() if cfg.root else CACHE_DIR
        name = self.info.name
        try:
            try:
                train, val = self._open(root, True), self._open(root, False)
            except RuntimeError:
                if not cfg.download:
                    raise
                self._download(root)
                train, val = self._open(root, True), self._open(root, False)
        except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, KeyError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"{name} could not be read from {str(root)!r} ({reason}); set data.root to "
                f"the folder holding torchvision's {name} files, or set data.download=true "
                "to download them there (needs a network)."
            ) from None
        splits = to_split(train), to_split(val)
        for x, y in splits:
            if x.shape[1:] != (3, 32, 32) or len(y) != len(x) or (
                    len(y) and int(y.max()) >= self.info.num_classes):
                raise UserError(f"The {name} files in {str(root)!r} do not hold 3x32x32 images "
                                f"with {self.info.num_classes} classes; replace them.")
        return splits


@DATASETS.register("cifar10")
class CIFAR10(CIFARSource):
    """CIFAR-10, 3x32x32, 10 classes, 50000 train / 10000 test (torchvision; crop 32 pad 4 + flip).

    Normalisation: the per-channel mean and standard deviation of the training images.
    """

    info = DatasetInfo(name="cifar10", num_classes=10, in_channels=3, input_size=32,
                       train_size=50000, val_size=10000, mean=(0.4914, 0.4822, 0.4465),
                       std=(0.2470, 0.2435, 0.2616))
    tv_name = "CIFAR10"


@DATASETS.register("cifar100")
class CIFAR100(CIFARSource):
    """CIFAR-100, 3x32x32, 100 classes, 50000 train / 10000 test (crop 32 pad 4 + flip).

    Normalisation constants as in the CRD / RepDistiller code the KD tables come from.
    """

    info = DatasetInfo(name="cifar100", num_classes=100, in_channels=3, input_size=32,
                       train_size=50000, val_size=10000, mean=(0.5071, 0.4867, 0.4408),
                       std=(0.2675, 0.2565, 0.2761))
    tv_name = "CIFAR100"

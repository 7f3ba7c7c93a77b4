"""Datasets and loaders: Fashion-MNIST (default), CIFAR-10/100, ImageNet folders, synthetic.

>>> from kdlab.data import build_loaders, describe
>>> describe("fashion_mnist").num_classes
10

Every loader yields ``(images, targets, index)`` on the requested device (see
:func:`build_loaders`); small datasets live on the device and are augmented there.
"""

from __future__ import annotations

from kdlab.core.autoimport import import_submodules
from kdlab.data.base import DATASETS, DatasetInfo, Loaders
from kdlab.data.loaders import build_loaders, describe

import_submodules(__name__)

__all__ = ["DATASETS", "DatasetInfo", "Loaders", "build_loaders", "describe"]

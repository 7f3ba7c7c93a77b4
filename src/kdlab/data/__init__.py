"""The data machinery every task shares: the dataset registry (:mod:`.base`, filled by each
task's ``datasets``), loaders that keep small datasets on the device and augment them there
(:mod:`.loaders`, :mod:`.device_loader`, :mod:`.augment`), file loaders with workers
(:mod:`.folder_loader`), per-index sampling (:mod:`.sampling`), the in-memory data of the
Python API (:mod:`.memory`), the Fashion-MNIST files and the scenes generated from them
(:mod:`.fashion_mnist`, :mod:`.scenes`, :mod:`.scene_sets`, :mod:`.dense_loader`,
:mod:`.dense_augment`) and the teacher soft-label cache's reader (:mod:`.soft_labels`).

>>> from kdlab.data import build_loaders, describe
>>> describe("fashion_mnist").num_classes
10

Every loader yields ``(images, targets, index)`` on the requested device (see
:func:`build_loaders`); small datasets live on the device and are augmented there.
"""

from __future__ import annotations

from kdlab.data.base import DATASETS, DatasetInfo, Loaders
from kdlab.data.loaders import build_loaders, describe

__all__ = ["DATASETS", "DatasetInfo", "Loaders", "build_loaders", "describe"]

"""CIFAR-10/100 (tasks/classification/datasets/cifar.py): torchvision's pickles read into the
device-resident loaders (tiny fake pickles), and a missing download as one user error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.core.config import DataConfig
from kdlab.data import build_loaders
from kdlab.data.augment import normalise
from kdlab.errors import UserError

CPU = torch.device("cpu")


def collect(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def fake_cifar(root: Path, classes: int, per_batch: int = 6) -> dict:
    """torchvision's CIFAR layout with tiny pickles (md5 checks are patched out in the test)."""
    cifar100 = classes == 100
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    key = "fine_labels" if cifar100 else "labels"
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + [
        "test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[name] = (data, labels)
    meta_name, meta_key = ("meta", "fine_label_names") if cifar100 else ("batches.meta",
                                                                         "label_names")
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(classes)]}, f)
    return written


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_code_path_with_fake_pickles(tmp_path, monkeypatch, name, classes):
    import torchvision.datasets.cifar as tv_cifar

    written = fake_cifar(tmp_path, classes)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    loaders = build_loaders(DataConfig(name=name, root=str(tmp_path), download=False,
                                       batch_size=4, eval_batch_size=4), CPU)
    n_train = 6 if classes == 100 else 30
    assert (loaders.info.train_size, loaders.info.val_size) == (n_train, 6)
    assert loaders.info.num_classes == classes
    images, targets, index = (torch.cat(t) for t in zip(*collect(loaders.val), strict=True))
    data, labels = written["test" if classes == 100 else "test_batch"]
    expected = normalise(torch.from_numpy(data).view(6, 3, 32, 32), loaders.info.mean,
                         loaders.info.std)
    torch.testing.assert_close(images, expected)
    assert targets.tolist() == labels and index.tolist() == list(range(6))
    x, _, _ = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32)


def test_missing_cifar_is_user_error(tmp_path):
    with pytest.raises(UserError, match="data.download=true"):
        build_loaders(DataConfig(name="cifar10", root=str(tmp_path), download=False), CPU)

"""ImageNet-style folders (tasks/classification/datasets/imagenet.py): classes from the folder
names, deterministic worker loading, and its user errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.core.config import DataConfig
from kdlab.data import build_loaders
from kdlab.errors import UserError

CPU = torch.device("cpu")


def collect(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split, per_class in (("train", 4), ("val", 3)):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    return tmp_path


def test_imagenet_folder_path(image_folder):
    cfg = DataConfig(name="imagenet", root=str(image_folder), batch_size=3, eval_batch_size=4,
                     num_workers=0)
    loaders = build_loaders(cfg, CPU, seed=4)
    assert (loaders.info.num_classes, loaders.info.train_size, loaders.info.val_size) == (2, 8, 6)
    assert len(loaders.train) == 2 and len(loaders.val) == 2
    val = collect(loaders.val)
    assert torch.cat([b[2] for b in val]).tolist() == list(range(6))
    assert torch.cat([b[1] for b in val]).tolist() == [0, 0, 0, 1, 1, 1]
    assert val[0][0].shape == (4, 3, 224, 224) and val[0][0].dtype == torch.float32
    loaders.train.set_epoch(1)
    first = collect(loaders.train)
    assert first[0][0].shape == (3, 3, 224, 224) and first[0][2].dtype == torch.int64
    workers = build_loaders(DataConfig(name="imagenet", root=str(image_folder), batch_size=3,
                                       num_workers=1), CPU, seed=4).train
    workers.set_epoch(1)
    for a, b in zip(first, collect(workers), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    workers.set_epoch(2)
    assert not torch.equal(first[0][0], collect(workers)[0][0])


def test_imagenet_user_errors(tmp_path, image_folder):
    with pytest.raises(UserError, match="data.root"):
        build_loaders(DataConfig(name="imagenet", root=str(tmp_path / "none")), CPU)
    with pytest.raises(UserError, match="device_resident"):
        build_loaders(DataConfig(name="imagenet", root=str(image_folder),
                                 device_resident=True), CPU)

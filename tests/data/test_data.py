"""kdlab.data: IDX parsing, loaders (shapes, determinism, sharding), augmentation, the dataset
registry (the classification datasets themselves: tests/tasks/classification/datasets/)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.core.config import DataConfig
from kdlab.data import DATASETS, build_loaders, describe
from kdlab.data import fashion_mnist as fm
from kdlab.data.augment import CropFlip, crop_flip, normalise
from kdlab.errors import UserError
from support.data import tiny_fashion, write_idx

CPU = torch.device("cpu")


def collect(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


# ------------------------------------------------------------------ IDX / Fashion-MNIST
@pytest.mark.skipif(fm.find_files(fm.DEBIAN_DIR) is None,
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_files():
    files = fm.find_files(fm.DEBIAN_DIR)
    (xt, yt), (xv, yv) = fm.load_folder(files)
    assert xt.shape == (60000, 1, 28, 28) and xt.dtype == torch.uint8
    assert xv.shape == (10000, 1, 28, 28)
    assert yt.shape == (60000,) and yv.shape == (10000,) and yt.dtype == torch.int64
    assert sorted(yt.unique().tolist()) == list(range(10))
    assert torch.bincount(yt).tolist() == [6000] * 10
    assert sorted(yv.unique().tolist()) == list(range(10))


@pytest.mark.parametrize("compress", [True, False])
def test_tiny_idx_roundtrip_through_loaders(tmp_path, compress):
    arrays = tiny_fashion(tmp_path, compress=compress)
    assert np.array_equal(fm.read_idx(next(tmp_path.glob("train-images*"))),
                          arrays["train_images"])
    cfg = DataConfig(root=str(tmp_path), download=False, batch_size=8, eval_batch_size=5)
    loaders = build_loaders(cfg, CPU)
    assert loaders.info.train_size == 40 and loaders.info.val_size == 13
    assert len(loaders.train) == 5 and len(loaders.val) == 3
    images, targets, index = (torch.cat(t) for t in zip(*collect(loaders.val), strict=True))
    assert index.tolist() == list(range(13))
    expected = (torch.from_numpy(arrays["val_images"]).float()[:, None] / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(images, expected)
    assert targets.tolist() == arrays["val_labels"].tolist()


def test_corrupt_idx_files_are_user_errors(tmp_path):
    good = np.zeros((3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "ok.gz", good)
    raw = gzip.decompress((tmp_path / "ok.gz").read_bytes())
    cases = {
        "magic": b"\x01\x02" + raw[2:],
        "type": raw[:2] + b"\x0d" + raw[3:],
        "truncated": raw[:-5],
        "header": raw[:6],
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(UserError, match="not a valid IDX file"):
            fm.read_idx(tmp_path / name)
    (tmp_path / "broken.gz").write_bytes((tmp_path / "ok.gz").read_bytes()[:20])
    with pytest.raises(UserError, match="not a valid IDX file"):
        fm.read_idx(tmp_path / "broken.gz")


def test_wrong_image_shape_is_user_error(tmp_path):
    tiny_fashion(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((13, 32, 32), dtype=np.uint8))
    with pytest.raises(UserError, match="not N x 28 x 28"):
        build_loaders(DataConfig(root=str(tmp_path), download=False), CPU)


def test_missing_fashion_mnist_names_all_options(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(UserError) as err:
        build_loaders(cfg, CPU)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.root" in msg and "data.download=true" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_failed_download_leaves_no_files(tmp_path, monkeypatch):
    import torchvision.datasets

    class NoNetwork:
        def __init__(self, root, **kwargs):
            (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True)
            (Path(root) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"x")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoNetwork)
    with pytest.raises(UserError, match="download failed"):
        build_loaders(DataConfig(root=str(tmp_path), download=True), CPU)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------ loaders
def synthetic(**kw):
    return DataConfig(name="synthetic", **kw)


def test_loader_shapes_dtypes_len_and_drop_last():
    loaders = build_loaders(synthetic(batch_size=32, eval_batch_size=100, train_subset=100),
                            CPU, seed=3)
    assert loaders.info.train_size == 100 and loaders.info.val_size == 256
    assert len(loaders.train) == 3 and len(loaders.val) == 3
    batches = collect(loaders.train)
    assert len(batches) == 3
    for images, targets, index in batches:
        assert images.shape == (32, 3, 16, 16) and images.dtype == torch.float32
        assert targets.shape == (32,) and targets.dtype == torch.int64
        assert index.dtype == torch.int64 and images.device == CPU
    seen = torch.cat([b[2] for b in batches])
    assert len(set(seen.tolist())) == 96 and int(seen.max()) < 100  # shuffled, last 4 dropped
    val = collect(loaders.val)
    assert [len(b[2]) for b in val] == [100, 100, 56]
    assert torch.cat([b[2] for b in val]).tolist() == list(range(256))


def test_same_seed_and_epoch_give_identical_batches():
    cfg = synthetic(batch_size=64)
    a, b = build_loaders(cfg, CPU, seed=7).train, build_loaders(cfg, CPU, seed=7).train
    a.set_epoch(0)
    _ = collect(a)  # a resumed run's loader has seen other epochs first, or none
    a.set_epoch(3)
    b.set_epoch(3)
    for (xa, ya, ia), (xb, yb, ib) in zip(collect(a), collect(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    b.set_epoch(4)
    assert not torch.equal(collect(a)[0][2], collect(b)[0][2])
    other_seed = build_loaders(cfg, CPU, seed=8).train
    other_seed.set_epoch(3)
    assert not torch.equal(collect(a)[0][2], collect(other_seed)[0][2])


def test_augmentation_keeps_shapes_and_is_off_when_disabled():
    source = DATASETS.get("synthetic")()
    (xt, yt), _ = source.load(synthetic())
    info = source.info
    plain = build_loaders(synthetic(batch_size=128, augment=False), CPU).train
    for images, targets, index in plain:
        torch.testing.assert_close(images, normalise(xt[index], info.mean, info.std))
        assert torch.equal(targets, yt[index])
    aug = build_loaders(synthetic(batch_size=128), CPU).train
    changed = 0
    for images, _, index in aug:
        assert images.shape == (128, 3, 16, 16)
        changed += int((images != normalise(xt[index], info.mean, info.std)).flatten(1)
                       .any(1).sum())
    assert changed > 1024 * 0.7  # 8 of 9 offsets move the image; P(identity) = 1/9


def test_fashion_mnist_train_batches_are_crops_and_flips(tmp_path):
    arrays = tiny_fashion(tmp_path)
    raw = torch.from_numpy(arrays["train_images"])[:, None]
    loader = build_loaders(DataConfig(root=str(tmp_path), download=False, batch_size=40),
                           CPU, seed=1).train
    (images, _, index), = collect(loader)
    pixels = (images * 0.3530 + 0.2860) * 255
    padded = F.pad(raw[index].float(), (2, 2, 2, 2))
    flipped = 0
    for i in range(40):
        windows = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        hits = [f for f in (False, True) for w in windows
                if torch.allclose(pixels[i], w.flip(-1) if f else w, atol=1e-3)]
        assert hits, f"sample {i} is no padded crop of its source"
        flipped += hits[0]
    assert 0 < flipped < 40


def test_crop_flip_on_a_hand_made_image():
    img = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6) + 1
    dy, dx = torch.tensor([0, 3]), torch.tensor([4, 1])
    out = crop_flip(img, dy, dx, torch.tensor([False, True]), pad=2)
    padded = torch.zeros(2, 3, 9, 10)
    padded[:, :, 2:7, 2:8] = img
    assert torch.equal(out[0], padded[0, :, 0:5, 4:10])
    assert torch.equal(out[1], torch.flip(padded[1, :, 3:8, 1:7], dims=[-1]))
    centre = crop_flip(img, torch.tensor([2, 2]), torch.tensor([2, 2]),
                       torch.tensor([True, False]), pad=2)
    assert torch.equal(centre[0], torch.flip(img[0], dims=[-1])) and torch.equal(centre[1], img[1])
    u8 = crop_flip(img.to(torch.uint8), dy, dx, torch.tensor([False, True]), pad=2)
    assert u8.dtype == torch.uint8 and torch.equal(u8.float(), out)
    d = CropFlip(pad=3, flip=False).draw(500, torch.Generator().manual_seed(0))
    assert d[0].min() == 0 and d[0].max() == 6 and not d[2].any()


@pytest.mark.parametrize("n", [256, 101])
def test_two_rank_shards_are_disjoint_and_cover(n):
    cfg = synthetic(batch_size=10, eval_batch_size=16, train_subset=n, val_subset=n)
    ranks = [build_loaders(cfg, CPU, seed=5, rank=r, world_size=2) for r in range(2)]
    for lo in ranks:
        lo.train.set_epoch(2)
    train = [torch.cat([b[2] for b in collect(lo.train)]) for lo in ranks]
    one_batch = synthetic(batch_size=n // 2, train_subset=n)
    full = [collect(build_loaders(one_batch, CPU, seed=5, rank=r, world_size=2).train)[0][2]
            for r in range(2)]
    assert len(ranks[0].train) == len(ranks[1].train) == -(-n // 2) // 10
    if n % 2 == 0:
        assert not set(train[0].tolist()) & set(train[1].tolist())
        assert sorted(full[0].tolist() + full[1].tolist()) == list(range(n))
    val = [torch.cat([b[2] for b in collect(lo.val)]) for lo in ranks]
    assert not set(val[0].tolist()) & set(val[1].tolist())
    assert sorted(val[0].tolist() + val[1].tolist()) == list(range(n))  # no padded duplicates


def test_resident_and_host_paths_give_the_same_batches():
    a = build_loaders(synthetic(device_resident=True), CPU, seed=2).train
    b = build_loaders(synthetic(device_resident=False), CPU, seed=2).train
    for (xa, _, ia), (xb, _, ib) in zip(collect(a), collect(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ia, ib)


def test_synthetic_is_learnable_in_a_few_steps():
    torch.manual_seed(0)
    loader = build_loaders(synthetic(batch_size=64), CPU).train
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for images, targets, _ in loader:
            loss = F.cross_entropy(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])


def test_user_errors_for_names_and_sizes():
    with pytest.raises(UserError, match="Did you mean 'fashion_mnist'"):
        describe("fashion_mnst")
    with pytest.raises(UserError, match="batch_size"):
        build_loaders(synthetic(batch_size=2000), CPU)
    with pytest.raises(UserError, match="train_subset"):
        build_loaders(synthetic(train_subset=0), CPU)
    info = describe("cifar100")
    assert (info.num_classes, info.in_channels, info.input_size) == (100, 3, 32)
    assert set(DATASETS.names()) >= {"fashion_mnist", "cifar10", "cifar100", "imagenet",
                                     "synthetic"}

"""VOC, Cityscapes and ADE20K loaders on tiny fake folder layouts written here (no downloads).

Every fake image encodes its training label map (each pixel's red value is ``code(label)``),
so after the joint transforms the image and the label map can be checked against each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.core.config import DataConfig
from kdlab.data import DATASETS, build_loaders, describe
from kdlab.errors import UserError

CPU = torch.device("cpu")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SIZES = {"train": [(20, 30), (26, 22), (24, 24)], "val": [(18, 25), (21, 17)]}
# stored label value -> training label, per dataset (a few of each, and ignored ones)
RAW = {
    "voc_seg": {0: 0, 3: 3, 20: 20, 255: 255},
    "cityscapes": {7: 0, 26: 13, 33: 18, 0: 255, 4: 255},
    "ade20k": {1: 0, 12: 11, 150: 149, 0: 255},
}


def block_labels(h: int, w: int, raw: list[int], rng: np.random.Generator) -> np.ndarray:
    """Stored label values in 6 x 6 blocks."""
    blocks = rng.choice(raw, size=(-(-h // 6), -(-w // 6)))
    return np.kron(blocks, np.ones((6, 6), dtype=np.int64))[:h, :w].astype(np.uint8)


def code(labels):
    """The red value that encodes a training label (one-to-one on each dataset's labels
    used here; 255 -> 250), for numpy arrays and torch tensors alike."""
    return (labels * 37) % 240 + 5


def encode(train_labels: np.ndarray) -> np.ndarray:
    labels = train_labels.astype(np.int64)
    red = np.where(labels == 255, 250, code(labels))
    return np.stack([red, 255 - red, np.full_like(red, 7)], -1).astype(np.uint8)


def write_pair(image_path: Path, label_path: Path, raw: np.ndarray, table: dict[int, int],
               palette: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """PNG data (lossless; PIL reads by content, so a .jpg name is fine) for both files."""
    train = np.vectorize(table.get)(raw).astype(np.uint8)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encode(train)).save(image_path, format="PNG")
    label = Image.fromarray(raw)
    if palette:  # VOC's label files are palette images; their indices are the labels
        label = label.convert("P")
        label.putpalette([v for k in range(256) for v in (k, k, k)])
    label.save(label_path, format="PNG")
    return encode(train), train


def fake_layout(root: Path, name: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Write ``name``'s folder layout; return each split's (image, training labels) in the
    dataset's order."""
    rng = np.random.default_rng(0)
    table = RAW[name]
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for split, sizes in SIZES.items():
        out[split] = []
        for i, (h, w) in enumerate(sizes):
            raw = block_labels(h, w, list(table), rng)
            if name == "voc_seg":
                base = root / "VOCdevkit" / "VOC2012"
                stem = f"2007_{split}{i:03d}"
                pair = (base / "JPEGImages" / f"{stem}.jpg",
                        base / "SegmentationClass" / f"{stem}.png")
                lists = base / "ImageSets" / "Segmentation"
                lists.mkdir(parents=True, exist_ok=True)
                with open(lists / f"{split}.txt", "a") as f:
                    f.write(stem + "\n")
            elif name == "cityscapes":
                stem = f"aachen_{i:06d}_000019"
                pair = (root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png",
                        root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png")
            else:
                folder = "training" if split == "train" else "validation"
                base = root / "ADEChallengeData2016"
                stem = f"ADE_{folder}_{i:08d}"
                pair = (base / "images" / folder / f"{stem}.jpg",
                        base / "annotations" / folder / f"{stem}.png")
            out[split].append(write_pair(*pair, raw, table, palette=name == "voc_seg"))
    return out


def config(root: Path, name: str, **kw) -> DataConfig:
    base = dict(name=name, root=str(root), download=False, batch_size=2, eval_batch_size=2,
                num_workers=0)
    return DataConfig(**{**base, **kw})


def normalised(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float64) / 255 - MEAN) / STD
    return torch.from_numpy(x).permute(2, 0, 1).float()


def placements(red: np.ndarray, known: np.ndarray, source: np.ndarray) -> set[bool]:
    """The flip flags with which ``red`` (the crop, where ``known``) is a window of
    ``source`` (found by trying every offset)."""
    h, w = red.shape
    found = set()
    for flip in (False, True):
        src = source[:, ::-1] if flip else source
        padded = np.full((src.shape[0] + 2 * h, src.shape[1] + 2 * w), -1.0)
        padded[h:h + src.shape[0], w:w + src.shape[1]] = src
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w))  # (Y, X, h, w)
        close = (np.abs(windows - red) < 1e-3) | ~known
        if close.all(axis=(2, 3)).any():
            found.add(flip)
    return found


@pytest.fixture
def exact_crops(monkeypatch):
    """Make every dataset's training transform a pure crop + flip (no resize): the shorter side
    is resized to itself when ``base_size`` is the image's shorter side and ``scale`` is 1."""
    for name in RAW:
        cls = DATASETS.get(name)
        monkeypatch.setattr(cls, "crop", (16, 28))
        monkeypatch.setattr(cls, "scale", (1.0, 1.0))


@pytest.mark.parametrize("name", list(RAW))
def test_val_is_whole_images_with_mapped_labels(tmp_path, name):
    data = fake_layout(tmp_path, name)
    info = describe(name)
    assert info.task == "segmentation" and info.ignore_index == 255
    loaders = build_loaders(config(tmp_path, name), CPU)
    assert (loaders.info.train_size, loaders.info.val_size) == (3, 2)
    images, labels, index = next(iter(loaders.val))
    assert index.tolist() == [0, 1] and labels.dtype == torch.int64
    for i, (image, train) in enumerate(data["val"]):
        h, w = train.shape
        assert torch.equal(labels[i, :h, :w], torch.from_numpy(train).long())
        assert (labels[i, h:] == 255).all() and (labels[i, :, w:] == 255).all()  # padding
        torch.testing.assert_close(images[i, :, :h, :w], normalised(image), atol=1e-5, rtol=0)
        outside = torch.cat([images[i, :, h:].flatten(), images[i, :, :, w:].flatten()])
        assert outside.numel() > 0 and outside.abs().max() < 0.02  # padded with the mean


@pytest.mark.parametrize("name", list(RAW))
def test_train_crop_and_flip_move_image_and_labels_together(tmp_path, name, exact_crops,
                                                            monkeypatch):
    data = fake_layout(tmp_path, name)
    cls = DATASETS.get(name)
    seen_flip = seen_pad = False
    monkeypatch.setattr(cls, "base_size", 24)  # the 24 x 24 image is not resized: check it
    loaders = build_loaders(config(tmp_path, name, batch_size=1), CPU, seed=1)
    for epoch in range(4):
        loaders.train.set_epoch(epoch)
        for images, labels, index in loaders.train:
            (image, train), = [data["train"][int(index)]]
            if min(train.shape) != cls.base_size:
                continue
            assert images.shape == (1, 3, 16, 28) and labels.shape == (1, 16, 28)
            lab = labels[0]
            known = lab != 255
            red = (images[0, 0] * STD[0] + MEAN[0]) * 255
            expected = code(lab).float()
            torch.testing.assert_close(red[known], expected[known], atol=1e-3, rtol=0)
            seen_pad |= bool((red < 1).any())  # the 28-wide crop of a narrower image pads
            flips = placements(red.numpy(), known.numpy(), image[..., 0])
            assert flips  # the crop is a window of the (maybe mirrored) source image
            seen_flip |= flips == {True}
    assert seen_pad and seen_flip
    loaders.train.set_epoch(2)
    a = [b[1] for b in loaders.train]
    loaders.train.set_epoch(2)
    b = [b[1] for b in loaders.train]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_random_scale_keeps_labels_on_their_pixels(tmp_path):
    data = fake_layout(tmp_path, "ade20k")
    cls = DATASETS.get("ade20k")
    del data
    loaders = build_loaders(config(tmp_path, "ade20k"), CPU, seed=0)
    assert cls.scale == (0.5, 2.0)
    agree = total = 0
    for images, labels, _ in loaders.train:
        red = (images[:, 0] * STD[0] + MEAN[0]) * 255
        known = labels != 255
        agree += int(((red - code(labels)).abs() < 3)[known].sum())
        total += int(known.sum())
    assert total > 0 and agree / total > 0.8  # block edges blend under bilinear resizing


@pytest.mark.parametrize("name", list(RAW))
def test_missing_folder_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError, match="data.root"):
        build_loaders(config(tmp_path / "nothing", name), CPU)

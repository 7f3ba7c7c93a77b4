"""Helpers of the data tests: Fashion-MNIST-format IDX files written from the format
description."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from kdlab.data import fashion_mnist as fm


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """An IDX file of unsigned bytes, written from the format description."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def tiny_fashion(folder: Path, n_train: int = 40, n_val: int = 13, compress: bool = True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "val_images": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "val_labels": rng.integers(0, 10, n_val, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in fm.FILES.items():
        write_idx(folder / (name + (".gz" if compress else "")), arrays[key], compress)
    return arrays

"""Fashion-MNIST's files (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): 28x28 grey clothing
images, read by the embedded default dataset
(:mod:`kdlab.tasks.classification.datasets.fashion_mnist`) and by the scene generator of the
dense tasks (:mod:`kdlab.data.scene_sets`).

The four original IDX files (gzip-compressed or not) are read directly.
With ``data.root`` set they are looked for there (or in torchvision's ``FashionMNIST/raw``
below it) and downloaded there if missing and ``data.download`` is true. Without it: Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), then
``~/.cache/kdlab/FashionMNIST/raw``, where torchvision downloads them if allowed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlab.data.loaders import Split
from kdlab.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "kdlab"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
#: the ten classes, in label order (Xiao et al. 2017, Table 1)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses

_cache: dict[tuple, tuple[Split, Split]] = {}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``.gz`` or raw) into an array of its stated shape.

    Layout (LeCun's MNIST page): two zero bytes, the type code ``0x08``, the number of
    dimensions, each dimension as a big-endian int32, then the data. Any mismatch, a broken
    gzip stream or a wrong length is a UserError.
    """
    path = Path(path)
    hint = f"{str(path)!r} is not a valid IDX file"
    fix = "; delete it and install or download the dataset again."
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{hint} ({e}){fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{hint} (bad magic number){fix}")
    if raw[2] != IDX_UBYTE:
        raise UserError(f"{hint} (type code {raw[2]:#04x}, expected unsigned bytes 0x08){fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{hint} (truncated header){fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise UserError(
            f"{hint} (header says {shape}, i.e. {int(np.prod(shape))} bytes, "
            f"but {len(raw) - header} follow){fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (``.gz`` preferred), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def parse_split(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"{str(images_path)!r} holds shape {images.shape}, not N x 28 x 28; "
                        "it is not a Fashion-MNIST image file, replace it.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise UserError(f"{str(labels_path)!r} has {labels.shape} labels for "
                        f"{images.shape[0]} images; replace the Fashion-MNIST files.")
    if labels.size and labels.max() > 9:
        raise UserError(f"{str(labels_path)!r} holds labels above 9; replace the file.")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_folder(files: dict[str, Path]) -> tuple[Split, Split]:
    """Parse the four files (memoised per process by path, size and modification time)."""
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                for p in files.values())
    if key not in _cache:
        _cache[key] = (parse_split(files["train_images"], files["train_labels"]),
                       parse_split(files["val_images"], files["val_labels"]))
    return _cache[key]


def download(target: Path) -> None:
    """Download the four ``.gz`` files into ``target`` with torchvision, all or nothing."""
    from torchvision.datasets import FashionMNIST

    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target))
    try:
        FashionMNIST(root=str(tmp), train=True, download=True)
        raw = tmp / "FashionMNIST" / "raw"
        for name in FILES.values():
            os.replace(raw / f"{name}.gz", target / f"{name}.gz")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def not_found(places: list[Path], reason: str = "") -> UserError:
    where = ", ".join(str(p) for p in places)
    why = f" (download failed: {reason})" if reason else ""
    return UserError(
        f"Fashion-MNIST was not found in {where}{why}; install it with "
        "`sudo apt-get install dataset-fashion-mnist`, or set data.root to a folder holding "
        "its four IDX files (train-images-idx3-ubyte.gz, ...), or allow a network download "
        "with data.download=true."
    )


def locate(root: str | None, allow_download: bool) -> dict[str, Path]:
    """Find (or download) the four files; a UserError naming every option if that fails."""
    if root is not None:
        places = [Path(root).expanduser(), Path(root).expanduser() / "FashionMNIST" / "raw"]
    else:
        places = [DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    for place in places:
        files = find_files(place)
        if files is not None:
            return files
    if not allow_download:
        raise not_found(places)
    try:
        download(places[-1])
    except (RuntimeError, OSError) as e:
        raise not_found(places, str(e).strip().splitlines()[0] if str(e).strip() else
                        type(e).__name__) from None
    files = find_files(places[-1])
    if files is None:
        raise not_found(places, "the files did not appear")
    return files

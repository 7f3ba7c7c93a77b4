"""Teacher soft-label cache: the frozen teacher's outputs on ``K`` stored views per image.

In the spirit of FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022, Sec. 3): the teacher runs once, offline, over ``K`` augmented views of
every training image; the augmentation parameters of each view (here the crop offset and the
flip of :class:`~kdlab.data.augment.CropFlip`) and the teacher's outputs on it are stored.
Training then draws one stored view per image and epoch (:class:`CachedTeacher`), gives the
student exactly that view, and reads the teacher's outputs instead of running the teacher.

Files: ``PATH`` is one flat file read through :class:`numpy.memmap`, holding the arrays the
metadata lists (each at a 64-byte aligned offset):

- ``params``: int16 ``(N, K, P)``, the augmentation parameters of each view;
- ``logits``: float16 ``(N, K, C)`` (format ``logits``), or ``probs`` float16 ``(N, K, k)``
  with ``classes`` int16/int32 ``(N, K, k)`` (format ``topk``: the top-k softmax
  probabilities, FKD's label compression).

``PATH.json`` holds the metadata (teacher weights' SHA-256, dataset name, size and content
hash, normalisation, augmentation, ``K``, format); it is written last, after the data file has
been renamed into place, so its presence with ``"complete": true`` is the completion flag.
While a cache is built the data lives in ``PATH.partial`` and the progress marker (images
done) in ``PATH.partial.json``; an interrupted build continues from that marker.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlab.data.sampling import epoch_generator
from kdlab.errors import UserError

FORMAT = "kdlab-teacher-cache"
VERSION = 1
OUTPUTS = ("logits", "topk")
#: the random stream (of ``kdlab.data.sampling.epoch_generator``) that picks each epoch's views
VIEW_STREAM = 1
#: probabilities below this count as zero when top-k outputs are turned back into logits
_TINY = 1e-12
_ALIGN = 64


# --------------------------------------------------------------------- identities
def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a network's state_dict (names, dtypes, shapes and values, in order)."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def images_sha256(images: torch.Tensor) -> str:
    """SHA-256 of a uint8 image tensor's bytes (which training images a cache was built on)."""
    return hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def augmentation_meta(augment: Any | None) -> dict[str, Any]:
    """What a cache records about the training augmentation (``{"kind": "none"}`` without)."""
    return dict(augment.describe()) if augment is not None else {"kind": "none"}


def num_params(augment: Any | None) -> int:
    """How many int16 numbers describe one view (the length of ``augment.draw``'s tuple)."""
    if augment is None:
        return 1
    return len(augment.draw(1, torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------- layout
def layout(n: int, views: int, n_params: int, num_classes: int, output: str,
           topk: int) -> dict[str, dict[str, Any]]:
    """The arrays of a cache file: ``{name: {offset, dtype, shape}}`` in file order."""
    arrays: list[tuple[str, str, tuple[int, ...]]] = [("params", "int16", (n, views, n_params))]
    if output == "logits":
        arrays.append(("logits", "float16", (n, views, num_classes)))
    else:
        index_dtype = "int16" if num_classes <= np.iinfo(np.int16).max else "int32"
        arrays += [("probs", "float16", (n, views, topk)),
                   ("classes", index_dtype, (n, views, topk))]
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, dtype, shape in arrays:
        out[name] = {"offset": offset, "dtype": dtype, "shape": list(shape)}
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        offset += -(-size // _ALIGN) * _ALIGN
    return out


def file_size(arrays: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of a cache file with these arrays."""
    return max(a["offset"] + int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
               for a in arrays.values())


def memmaps(path: Path, arrays: Mapping[str, Mapping[str, Any]],
            mode: str) -> dict[str, np.memmap]:
    """Each array of the layout as a memory map of ``path`` (``mode`` ``r`` or ``r+``)."""
    return {name: np.memmap(path, dtype=a["dtype"], mode=mode, offset=a["offset"],
                            shape=tuple(a["shape"])) for name, a in arrays.items()}


def partial_paths(path: Path) -> tuple[Path, Path]:
    """The data file and the progress marker of a cache being built."""
    return path.with_name(path.name + ".partial"), path.with_name(path.name + ".partial.json")


def meta_path(path: Path) -> Path:
    """The metadata of a finished cache: ``PATH.json``."""
    return path.with_name(path.name + ".json")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not one."""
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return tree if isinstance(tree, dict) else None


# --------------------------------------------------------------------- reading
def outputs_to_logits(values: Mapping[str, np.ndarray], num_classes: int) -> torch.Tensor:
    """Logits (float32, ``(..., C)``) from stored outputs.

    Format ``logits``: the stored fp16 logits. Format ``topk``: log-probabilities of the top-k
    classes, and for every other class the log of an equal share of the remaining probability
    mass (FKD's label compression). A softmax of the result gives back the stored top-k
    probabilities, and at any temperature keeps their ratios; with ``k = C`` it is the teacher's
    softmax up to fp16 rounding.
    """
    if "logits" in values:
        return torch.from_numpy(np.ascontiguousarray(values["logits"])).float()
    probs = torch.from_numpy(np.ascontiguousarray(values["probs"])).float()
    classes = torch.from_numpy(np.ascontiguousarray(values["classes"])).long()
    k = probs.shape[-1]
    rest = (1.0 - probs.sum(-1, keepdim=True)).clamp_min(0.0) / max(num_classes - k, 1)
    out = rest.clamp_min(_TINY).log().expand(*probs.shape[:-1], num_classes).clone()
    return out.scatter_(-1, classes, probs.clamp_min(_TINY).log())


class TeacherCache:
    """A finished cache, opened read-only (:meth:`open`); arrays are memory-mapped."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.arrays = memmaps(path, meta["arrays"], "r")
        self.n, self.views = int(meta["n"]), int(meta["views"])
        self.num_classes = int(meta["data"]["num_classes"])

    @classmethod
    def open(cls, path: str | Path) -> TeacherCache:
        """Open ``path``; a missing, unfinished or damaged cache is a UserError."""
        path = Path(path)
        hint = "build it with `kdlab cache-teacher RECIPE`"
        if path.suffix == ".json" and path.with_suffix("").is_file():
            path = path.with_suffix("")  # the metadata's name given for the cache's
        if not path.is_file():
            if partial_paths(path)[1].is_file():
                raise UserError(f"The teacher cache {str(path)!r} is not finished; run `kdlab "
                                "cache-teacher` with the same recipe again to complete it.")
            raise UserError(f"The teacher cache {str(path)!r} does not exist; {hint}.")
        meta = read_json(meta_path(path))
        if meta is None or meta.get("format") != FORMAT or not meta.get("complete"):
            raise UserError(f"The teacher cache {str(path)!r} has no complete metadata "
                            f"({meta_path(path).name}); {hint} again.")
        if int(meta.get("version", 0)) > VERSION:
            raise UserError(f"The teacher cache {str(path)!r} was written by a newer kdlab; "
                            "upgrade kdlab or build the cache again.")
        try:
            expected = file_size(meta["arrays"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"The metadata of the teacher cache {str(path)!r} is damaged; "
                            f"{hint} again.") from None
        if path.stat().st_size != expected:
            raise UserError(f"The teacher cache {str(path)!r} holds {path.stat().st_size} bytes "
                            f"but its metadata says {expected}; {hint} again.")
        return cls(path, meta)

    @property
    def nbytes(self) -> int:
        return file_size(self.meta["arrays"])

    def read(self, index: np.ndarray, view: np.ndarray, names: Sequence[str]
             ) -> dict[str, np.ndarray]:
        """The records of views ``view[i]`` of images ``index[i]`` (arrays ``(B, ...)``)."""
        return {name: self.arrays[name][index, view] for name in names}

    def params(self, index: np.ndarray, view: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Augmentation parameters of the given views, one int64 tensor ``(B,)`` each."""
        p = torch.from_numpy(self.read(index, view, ["params"])["params"].astype(np.int64))
        return tuple(p.unbind(-1))

    def logits(self, index: np.ndarray, view: np.ndarray) -> torch.Tensor:
        """The teacher's logits on the given views, float32 ``(B, C)`` on the CPU."""
        names = [n for n in self.meta["arrays"] if n != "params"]
        return outputs_to_logits(self.read(index, view, names), self.num_classes)

    # ----------------------------------------------------------------- checks
    def check_data(self, data: Mapping[str, Any]) -> None:
        """The run's training data (:func:`data_meta`) is the cache's; else a UserError."""
        mine, where = self.meta["data"], str(self.path)
        for key, what in (("dataset", "dataset"), ("train_size", "number of training images"),
                          ("images_sha256", "training images"),
                          ("normalise", "input normalisation")):
            if mine.get(key) != data.get(key):
                shown = ("" if key in ("images_sha256", "normalise")
                         else f" ({mine.get(key)!r}, the run has {data.get(key)!r})")
                raise UserError(
                    f"The teacher cache {where!r} was built on another {what} than this run's"
                    f"{shown}; build a cache for this data (same data.name and "
                    "data.train_subset) with `kdlab cache-teacher`.")

    def check_augmentation(self, augmentation: Mapping[str, Any]) -> None:
        if self.meta["augmentation"] != dict(augmentation):
            raise UserError(
                f"The teacher cache {str(self.path)!r} holds views of augmentation "
                f"{self.meta['augmentation']} but this run augments with {dict(augmentation)}; "
                "build the cache with this run's data.augment setting (`kdlab cache-teacher` "
                "with the run's recipe).")

    def check_teacher(self, model: str | None, sha256: str) -> None:
        t = self.meta["teacher"]
        if t.get("model") != model or t.get("sha256") != sha256:
            raise UserError(
                f"The teacher cache {str(self.path)!r} was built from another teacher "
                f"({t.get('model')} from {t.get('checkpoint')!r}) than this run's "
                f"model.teacher {model!r}; build the cache from this teacher with `kdlab "
                "cache-teacher`.")


def data_meta(name: str, images: torch.Tensor, num_classes: int, mean: Sequence[float],
              std: Sequence[float], scale: float, train_subset: int | None) -> dict[str, Any]:
    """What identifies a run's training images for a cache (``images`` uint8 ``(N, C, H, W)``)."""
    return {"dataset": name, "train_size": int(images.shape[0]), "train_subset": train_subset,
            "image_shape": list(images.shape[1:]), "num_classes": int(num_classes),
            "images_sha256": images_sha256(images),
            "normalise": {"mean": [float(m) for m in mean], "std": [float(s) for s in std],
                          "scale": float(scale)}}


# --------------------------------------------------------------------- training
class CachedTeacher:
    """The cache as a run sees it: which stored view each image gets in the current epoch.

    The view of image ``i`` in epoch ``e`` is a function of ``(seed, e, i)`` alone (a
    generator seeded like the loader's, on its own stream), so a resumed run, any batch size
    and any number of ranks see the same views. The train loader asks :meth:`augmentation_params`
    (the student's view) and the distiller :meth:`logits` (the teacher's outputs on it); the
    loader's ``set_epoch`` moves both to the next epoch.
    """

    def __init__(self, cache: TeacherCache, seed: int) -> None:
        self.cache, self.seed = cache, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        g = epoch_generator(self.seed, epoch, VIEW_STREAM)
        self._views = torch.randint(self.cache.views, (self.cache.n,), generator=g).numpy()

    def _where(self, index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        idx = index.detach().cpu().numpy()
        return idx, self._views[idx]

    def augmentation_params(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The stored augmentation parameters of this epoch's views of images ``index``."""
        return self.cache.params(*self._where(index))

    def logits(self, index: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (float32, CPU) on this epoch's views of images ``index``."""
        return self.cache.logits(*self._where(index))


def size_text(nbytes: int) -> str:
    """``12.3 MiB``-style size."""
    if nbytes <= 0:
        return "0 B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = min(int(math.log(nbytes, 1024)), len(units) - 1)
    return f"{nbytes / 1024 ** i:.1f} {units[i]}" if i else f"{nbytes} B"

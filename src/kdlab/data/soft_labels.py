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
hash, normalisation, augmentation, ``K``, format, and a SHA-256 of every
:data:`CHECKSUM_CHUNK` bytes of the data file); it is written last, after the data file has
been renamed into place, so its presence with ``"complete": true`` is the completion flag.
Opening a cache checks the metadata against the data file (sizes and array shapes) and the
checksums against its bytes, so an edited or damaged file is refused; a run then recomputes a
few stored entries with its teacher (:class:`Probe`), which catches a file whose values were
moved about (or that was built from other weights) yet is self-consistent.
While a cache is built the data lives in ``PATH.partial`` and the progress marker (images
done) in ``PATH.partial.json``; an interrupted build continues from that marker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlab.data.sampling import epoch_generator
from kdlab.errors import UserError

FORMAT = "kdlab-teacher-cache"
VERSION = 2  # 2: per-chunk SHA-256 checksums of the data file
OUTPUTS = ("logits", "topk")
#: the random stream (of ``kdlab.data.sampling.epoch_generator``) that picks each epoch's views
VIEW_STREAM = 1
#: probabilities below this count as zero when top-k outputs are turned back into logits
_TINY = 1e-12
_ALIGN = 64
#: bytes of the data file per checksum (a large cache is hashed by several threads)
CHECKSUM_CHUNK = 64 << 20
#: the arrays each output format stores, with their allowed dtypes
ARRAYS = {"logits": {"params": ("int16",), "logits": ("float16",)},
          "topk": {"params": ("int16",), "probs": ("float16",), "classes": ("int16", "int32")}}


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
        size = math.prod(shape) * np.dtype(dtype).itemsize
        offset += -(-size // _ALIGN) * _ALIGN
    return out


def file_size(arrays: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of a cache file with these arrays."""
    return max(a["offset"] + math.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize
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


def _chunk_sha256(path: Path, start: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = size
        while left > 0:
            block = f.read(min(left, 8 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def checksums(path: Path, chunk: int = CHECKSUM_CHUNK) -> dict[str, Any]:
    """SHA-256 of every ``chunk`` bytes of ``path`` (the last chunk shorter), computed by
    several threads (hashlib releases the GIL): ``{algorithm, chunk_bytes, chunks}``."""
    size = path.stat().st_size
    starts = range(0, max(size, 1), chunk)
    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
        chunks = list(pool.map(lambda s: _chunk_sha256(path, s, min(chunk, size - s)), starts))
    return {"algorithm": "sha256", "chunk_bytes": chunk, "chunks": chunks}


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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def inconsistency(meta: Mapping[str, Any]) -> str | None:
    """What in a cache's metadata contradicts itself or the layout of its data (e.g. more
    views than the arrays hold), or None when it is consistent."""
    try:
        n, views = meta["n"], meta["views"]
        output, arrays = meta["output"]["format"], meta["arrays"]
        num_classes = meta["data"]["num_classes"]
        topk = meta["output"].get("topk")
    except (KeyError, TypeError):
        return "a required entry is missing"
    if not (_count(n) and _count(views) and _count(num_classes)) or output not in ARRAYS:
        return f"n={n!r}, views={views!r}, classes={num_classes!r}, format={output!r}"
    if not isinstance(arrays, Mapping) or set(arrays) != set(ARRAYS[output]):
        return f"arrays {sorted(arrays) if isinstance(arrays, Mapping) else arrays!r}"
    width = num_classes if output == "logits" else topk
    if not _count(width) or width > num_classes:
        return f"top-k {topk!r} of {num_classes} classes"
    end = 0
    for name, a in arrays.items():
        shape = a.get("shape") if isinstance(a, Mapping) else None
        offset = a.get("offset") if isinstance(a, Mapping) else None
        if (not isinstance(shape, list) or len(shape) != 3 or not all(map(_count, shape))
                or a.get("dtype") not in ARRAYS[output][name] or not isinstance(offset, int)
                or offset < end or offset % _ALIGN):
            return f"array {name!r} is {dict(a) if isinstance(a, Mapping) else a!r}"
        want = [n, views, shape[2] if name == "params" else width]
        if shape != want:
            return (f"array {name!r} has shape {shape} but the metadata says {n} images x "
                    f"{views} views" + ("" if name == "params" else f" x {width}"))
        end = offset + math.prod(shape) * np.dtype(a["dtype"]).itemsize
    return None


def verify(path: Path, meta: Mapping[str, Any]) -> None:
    """Check ``path``'s bytes against the checksums of its metadata; a UserError names the
    first damaged byte range."""
    sums = meta.get("checksum")
    if not isinstance(sums, Mapping) or not isinstance(sums.get("chunks"), list):
        raise UserError(f"The teacher cache {str(path)!r} has no checksum (it was built by an "
                        "older kdlab); run `kdlab cache-teacher` with its recipe again, which "
                        "adds one without recomputing the outputs.")
    chunk = int(sums.get("chunk_bytes", CHECKSUM_CHUNK))
    found = checksums(path, chunk)["chunks"]
    for i, (want, got) in enumerate(zip(sums["chunks"], found)):
        if want != got:
            raise UserError(f"The teacher cache {str(path)!r} is damaged: bytes {i * chunk}.."
                            f"{min((i + 1) * chunk, path.stat().st_size)} differ from its "
                            "checksum (the file was changed after it was built); build it "
                            "again with `kdlab cache-teacher`.")
    if len(found) != len(sums["chunks"]):
        raise UserError(f"The teacher cache {str(path)!r} does not match its checksums "
                        f"({len(found)} chunks, {len(sums['chunks'])} recorded); build it "
                        "again with `kdlab cache-teacher`.")


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
        problem = inconsistency(meta)
        if problem is not None:
            raise UserError(f"The metadata of the teacher cache {str(path)!r} does not describe "
                            f"its data ({problem}); {hint} again.")
        expected = file_size(meta["arrays"])
        if path.stat().st_size != expected:
            raise UserError(f"The teacher cache {str(path)!r} holds {path.stat().st_size} bytes "
                            f"but its metadata says {expected}; {hint} again.")
        verify(path, meta)
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

    def mismatch(self, index: np.ndarray, view: np.ndarray, logits: torch.Tensor) -> str | None:
        """How the stored outputs of views ``view[i]`` of images ``index[i]`` differ from
        ``logits`` (float32 ``(B, C)``, the teacher recomputed on them), beyond fp16 rounding
        and the few-ULP differences of another device or batch; None when they agree."""
        names = [n for n in self.meta["arrays"] if n != "params"]
        stored = {k: torch.from_numpy(np.ascontiguousarray(v))
                  for k, v in self.read(index, view, names).items()}
        if "logits" in stored:
            have, want = stored["logits"].float(), logits
            allowed = 1e-2 * (1 + want.abs())
        else:
            have = stored["probs"].float()
            want = torch.softmax(logits, -1).gather(-1, stored["classes"].long())
            allowed = torch.full_like(want, 1e-2)
        bad = ~((have - want).abs() <= allowed)  # NaN counts as a difference
        if not bad.any():
            return None
        row = int(bad.any(-1).nonzero()[0])

        def shown(values: torch.Tensor) -> list[float]:
            return [round(v, 4) for v in values[row][bad[row]][:3].tolist()]

        return (f"image {int(index[row])}, view {int(view[row])}: stored {shown(have)} vs "
                f"recomputed {shown(want)}")

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


# --------------------------------------------------------------------- the run's teacher
@dataclass
class Probe:
    """A few stored views of a cache with the training images they show: a run recomputes
    them with its teacher (:func:`kdlab.training.cache_source.check_cached_entries`) and
    compares."""

    index: np.ndarray  # image of each probed entry
    view: np.ndarray  # its stored view
    images: torch.Tensor  # those training images, uint8 (P, C, H, W)
    augment: Any | None  # the run's augmentation (draws and applies the stored parameters)
    mean: Sequence[float]
    std: Sequence[float]
    scale: float

    @classmethod
    def pick(cls, cache: TeacherCache, images: torch.Tensor, augment: Any | None,
             mean: Sequence[float], std: Sequence[float], scale: float,
             count: int = 8) -> Probe:
        """``count`` entries spread over the images, each at another view."""
        index = np.unique(np.linspace(0, cache.n - 1, min(count, cache.n)).round().astype(int))
        view = np.arange(len(index)) % cache.views
        return cls(index, view, images[torch.from_numpy(index)].clone(), augment, mean, std,
                   scale)

    def inputs(self, cache: TeacherCache) -> torch.Tensor:
        """The probed views as the teacher saw them when the cache was built (float32)."""
        from kdlab.data.augment import normalise

        x = self.images
        if self.augment is not None:
            x = self.augment.apply(x, cache.params(self.index, self.view))
        return normalise(x, self.mean, self.std, self.scale)


# --------------------------------------------------------------------- training
class CachedTeacher:
    """The cache as a run sees it: which stored view each image gets in the current epoch.

    The view of image ``i`` in epoch ``e`` is a function of ``(seed, e, i)`` alone (a
    generator seeded like the loader's, on its own stream), so a resumed run, any batch size
    and any number of ranks see the same views. The train loader asks :meth:`augmentation_params`
    (the student's view) and the distiller :meth:`logits` (the teacher's outputs on it); the
    loader's ``set_epoch`` moves both to the next epoch.
    """

    def __init__(self, cache: TeacherCache, seed: int, probe: Probe | None = None) -> None:
        self.cache, self.seed, self.probe = cache, seed, probe
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

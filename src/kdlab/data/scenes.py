"""Fashion-MNIST scenes: a deterministic generator of small segmentation / detection scenes.

Each scene is a ``canvas x canvas`` grey image holding 2 to 6 Fashion-MNIST items (train split
for the training scenes, test split for the validation scenes) at random positions on a
cluttered background, with

* a per-pixel label map: 0 = background, ``1 + c`` for garment class ``c`` (11 classes);
* each item's box (xyxy of its *visible* pixels, pixel-edge coordinates: a box covering
  columns 3..5 is ``x1 = 3, x2 = 6``) and its label ``1 + c`` (1..10; 0 is background, the
  torchvision detection convention).

Composition. The background is low-amplitude smooth noise plus a few faint *fragments*
(small windows cut from other items at a fraction of their brightness); every background
pixel, fragments included, is labelled 0. Items are pasted in order; an item's pixels are its
pixels brighter than :attr:`SceneSpec.threshold`, and a later item occludes earlier ones, so
the label map holds the topmost item's class. An item whose visible area ends up below
:attr:`SceneSpec.min_visible` pixels (almost fully covered) keeps its class in the label map
but gets no box: it is dropped from the detection targets and counted in the ``dropped``
entry of the scene set. A detector that finds such an item is charged a false positive;
with the default of 20 pixels (a 4 x 5 sliver) this concerns about 5 % of the scenes and
almost never a recognisable item.

Determinism. Scenes are generated in chunks of :data:`CHUNK` whose random numbers come from a
generator seeded from ``(seed, split, chunk)``, so scene ``i`` depends only on the settings,
the source images and ``i`` (not on how many scenes are made). The result is cached under the
data root, keyed by the settings and a hash of the source images, and written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.data.sampling import epoch_seed
from kdlab.errors import UserError

ITEM = 28  # Fashion-MNIST items are 28 x 28
MAX_ITEMS = 6
CHUNK = 1024  # scenes per random stream (and per progress step)
FORMAT_VERSION = 1  # bump when the generator's output changes: old cache files are not reused
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SceneSpec:
    """The generator's settings (all part of the cache key)."""

    canvas: int = 64
    min_items: int = 2
    max_items: int = MAX_ITEMS
    threshold: int = 40  # item pixels: source pixels brighter than this (0..255)
    min_visible: int = 20  # items with fewer visible pixels get no box
    noise: float = 24.0  # amplitude of the smooth background noise (0..255 scale)
    fragments: int = 3  # faint item fragments per scene (labelled background)
    fragment_size: int = 10
    fragment_gain: float = 0.35  # fragment brightness relative to the source item
    seed: int = 20240501

    def check(self) -> None:
        if self.canvas < ITEM:
            raise UserError(f"data.canvas must be at least {ITEM} (one Fashion-MNIST item), "
                            f"got {self.canvas}.")
        if not 1 <= self.min_items <= self.max_items <= MAX_ITEMS:
            raise UserError(f"Scenes hold between 1 and {MAX_ITEMS} items; got "
                            f"{self.min_items}..{self.max_items}.")


@dataclass
class SceneSet:
    """Generated scenes: images ``(N, 1, S, S)`` uint8, masks ``(N, S, S)`` uint8 (0..10),
    boxes ``(N, max_items, 4)`` float32 and box labels ``(N, max_items)`` int64 (0 = no box;
    the rows of a scene with a box come first), and ``dropped`` (N,) int64: items of each
    scene with too few visible pixels to get a box."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    dropped: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def window_index(y: torch.Tensor, x: torch.Tensor, size: int, width: int) -> torch.Tensor:
    """Flat indices ``(N, size * size)`` of the ``size x size`` window with top-left corner
    ``(y, x)`` in a row-major frame ``width`` pixels wide (window pixels in row-major order)."""
    ar = torch.arange(size)
    offsets = (ar[:, None] * width + ar[None, :]).flatten()
    return (y * width + x)[:, None] + offsets[None]


def background(n: int, spec: SceneSpec, pool: torch.Tensor, g: torch.Generator,
               drawn: int | None = None) -> torch.Tensor:
    """Smooth noise plus faint fragments of random items, uint8 ``(N, S * S)``; random
    numbers are drawn for ``drawn >= n`` scenes and the first ``n`` used."""
    s, m = spec.canvas, drawn or n
    coarse = torch.rand(m, 1, max(s // 8, 2), max(s // 8, 2), generator=g)[:n]
    bg = spec.noise * F.interpolate(coarse, size=(s, s), mode="bilinear",
                                    align_corners=False).flatten(1)
    f = min(spec.fragment_size, ITEM)
    for _ in range(spec.fragments):
        src = pool[torch.randint(0, len(pool), (m,), generator=g)[:n]].flatten(1)
        sy, sx = torch.randint(0, ITEM - f + 1, (2, m), generator=g)[:, :n]
        y, x = torch.randint(0, s - f + 1, (2, m), generator=g)[:, :n]
        values = spec.fragment_gain * src.gather(1, window_index(sy, sx, f, ITEM)).float()
        where = window_index(y, x, f, s)
        bg.scatter_(1, where, torch.maximum(bg.gather(1, where), values))
    return bg.round().clamp(0, 255).to(torch.uint8)


def window_boxes(vis: torch.Tensor, y: torch.Tensor, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Box (xyxy, pixel edges, canvas coordinates) and pixel count of the true pixels of
    ``vis`` ``(N, 28, 28)``, a window whose top-left corner is at ``(y, x)``."""
    ar = torch.arange(ITEM)
    rows, cols = vis.any(dim=2), vis.any(dim=1)  # (N, 28)
    big = ITEM + 1
    box = torch.stack([torch.where(cols, ar, big).amin(1), torch.where(rows, ar, big).amin(1),
                       torch.where(cols, ar, -1).amax(1) + 1,
                       torch.where(rows, ar, -1).amax(1) + 1], dim=1)
    box = box + torch.stack([x, y, x, y], dim=1)
    return box.float(), vis.sum(dim=(1, 2))


def generate_chunk(items: torch.Tensor, classes: torch.Tensor, n: int, spec: SceneSpec,
                   g: torch.Generator, drawn: int | None = None) -> SceneSet:
    """``n`` scenes from source ``items`` ``(M, 28, 28)`` uint8 with ``classes`` ``(M,)``;
    random numbers are drawn for ``drawn >= n`` scenes (a whole chunk) and the first ``n``
    used, so a scene does not depend on how many follow it."""
    s, k, m = spec.canvas, spec.max_items, drawn or n
    counts = torch.randint(spec.min_items, spec.max_items + 1, (m,), generator=g)[:n]
    pick = torch.randint(0, len(items), (m, k), generator=g)[:n]
    pos = torch.randint(0, s - ITEM + 1, (m, k, 2), generator=g)[:n]
    image = background(n, spec, items, g, m)
    mask = torch.zeros(n, s * s, dtype=torch.uint8)
    owner = torch.full((n, s * s), -1, dtype=torch.int8)
    where = [window_index(pos[:, j, 0], pos[:, j, 1], ITEM, s) for j in range(k)]
    for j in range(k):
        values = items[pick[:, j]].flatten(1)
        on = (values > spec.threshold) & (j < counts)[:, None]
        cls = (classes[pick[:, j]] + 1).to(torch.uint8)[:, None]
        image.scatter_(1, where[j], torch.where(on, values, image.gather(1, where[j])))
        mask.scatter_(1, where[j], torch.where(on, cls, mask.gather(1, where[j])))
        owner.scatter_(1, where[j], torch.where(on, j, owner.gather(1, where[j])))
    boxes, areas = zip(*(window_boxes((owner.gather(1, where[j]) == j).view(n, ITEM, ITEM),
                                      pos[:, j, 0], pos[:, j, 1]) for j in range(k)))
    boxes, areas = torch.stack(boxes, 1), torch.stack(areas, 1)
    placed = torch.arange(k)[None] < counts[:, None]
    keep = placed & (areas >= spec.min_visible)
    labels = torch.where(keep, classes[pick] + 1, 0)
    # rows with a box first, in paste order (a stable sort on "has no box")
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    labels = labels.gather(1, order)
    boxes = boxes.gather(1, order[..., None].expand(n, k, 4)) * (labels > 0)[..., None]
    return SceneSet(images=image.view(n, 1, s, s), masks=mask.view(n, s, s), boxes=boxes,
                    labels=labels, dropped=(placed & ~keep).sum(1))


def generate(items: torch.Tensor, classes: torch.Tensor, n: int, spec: SceneSpec, split: str,
             *, progress: bool = False) -> SceneSet:
    """``n`` scenes of ``split`` (train | val); scene ``i`` depends on ``i``, not on ``n``."""
    spec.check()
    items = items.reshape(-1, ITEM, ITEM).to(torch.uint8).cpu()
    classes = classes.to(torch.int64).cpu()
    chunks = range(-(-n // CHUNK))
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"generating {n} {split} scenes", leave=False)
    parts = []
    for c in chunks:
        g = torch.Generator().manual_seed(epoch_seed(spec.seed, SPLITS[split], c))
        parts.append(generate_chunk(items, classes, min(CHUNK, n - c * CHUNK), spec, g, CHUNK))
    fields = [f.name for f in dataclasses.fields(SceneSet)]
    return SceneSet(**{f: torch.cat([getattr(p, f) for p in parts]) for f in fields})


def source_digest(*tensors: torch.Tensor) -> str:
    """A short content hash of the source images and labels."""
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_path(folder: Path, spec: SceneSpec, split: str, n: int, digest: str) -> Path:
    key = json.dumps([FORMAT_VERSION, dataclasses.asdict(spec), split, n, digest],
                     sort_keys=True)
    name = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return folder / f"{split}-{spec.canvas}px-{n}-{name}.pt"


def save_atomic(obj: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_scenes(folder: Path, items: torch.Tensor, classes: torch.Tensor, n: int,
                  spec: SceneSpec, split: str) -> SceneSet:
    """The scenes from the cache in ``folder``, generated and cached on the first call."""
    path = cache_path(folder, spec, split, n, source_digest(items, classes))
    if path.is_file():
        try:
            return SceneSet(**torch.load(path, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, EOFError, TypeError, pickle.UnpicklingError):
            pass  # a damaged cache file: generate again and replace it
    scenes = generate(items, classes, n, spec, split, progress=n >= 8 * CHUNK)
    try:
        save_atomic(scenes.to_dict(), path)
    except OSError as e:
        raise UserError(f"The scene cache {str(path)!r} could not be written ({e}); set "
                        "data.root to a writable folder.") from None
    return scenes

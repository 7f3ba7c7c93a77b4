"""Fashion-MNIST scenes: the generator against a per-scene reference, determinism, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.data import scenes as sc
from kdlab.errors import UserError

SPEC = sc.SceneSpec(canvas=40, seed=7)


def block_items(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Items that are solid rectangles of brightness 200 (a faint 30 rim around them, below
    the item threshold), with random sizes and classes."""
    g = torch.Generator().manual_seed(3)
    items = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        y0, x0 = torch.randint(0, 8, (2,), generator=g).tolist()
        y1, x1 = torch.randint(14, 28, (2,), generator=g).tolist()
        items[i, max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 30
        items[i, y0:y1, x0:x1] = 200
    return items, torch.randint(0, 10, (n,), generator=g)


def reference_chunk(items, classes, n, spec, g):
    """The scenes of one chunk pasted one item at a time with array slicing; the random
    numbers are drawn in the generator's order (counts, picks, positions, background)."""
    s, k = spec.canvas, spec.max_items
    counts = torch.randint(spec.min_items, spec.max_items + 1, (n,), generator=g)
    pick = torch.randint(0, len(items), (n, k), generator=g)
    pos = torch.randint(0, s - 28 + 1, (n, k, 2), generator=g)
    bg = sc.background(n, spec, items, g).view(n, s, s).numpy()
    out = []
    for i in range(n):
        image, mask, owner = bg[i].copy(), np.zeros((s, s), np.uint8), -np.ones((s, s), int)
        for j in range(int(counts[i])):
            item = items[pick[i, j]].numpy()
            y, x = pos[i, j].tolist()
            on = item > spec.threshold
            image[y:y + 28, x:x + 28][on] = item[on]
            mask[y:y + 28, x:x + 28][on] = int(classes[pick[i, j]]) + 1
            owner[y:y + 28, x:x + 28][on] = j
        boxes, dropped = [], 0
        for j in range(int(counts[i])):
            ys, xs = np.nonzero(owner == j)
            if len(ys) < spec.min_visible:
                dropped += 1
                continue
            boxes.append(([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                          int(classes[pick[i, j]]) + 1))
        out.append((image, mask, boxes, dropped))
    return out


def test_generator_matches_per_scene_reference():
    items, classes = block_items()
    spec = sc.SceneSpec(canvas=40, seed=7, min_visible=150)  # some items lose their box
    got = sc.generate_chunk(items, classes, 24, spec, torch.Generator().manual_seed(5))
    ref = reference_chunk(items, classes, 24, spec, torch.Generator().manual_seed(5))
    assert sum(r[3] for r in ref) > 0  # the drop rule was exercised
    for i, (image, mask, boxes, dropped) in enumerate(ref):
        assert np.array_equal(got.images[i, 0].numpy(), image)
        assert np.array_equal(got.masks[i].numpy(), mask)
        n = len(boxes)
        assert got.labels[i, :n].tolist() == [b[1] for b in boxes]
        assert (got.labels[i, n:] == 0).all() and (got.boxes[i, n:] == 0).all()
        assert got.boxes[i, :n].tolist() == [[float(v) for v in b[0]] for b in boxes]
        assert int(got.dropped[i]) == dropped


def test_scene_properties():
    items, classes = block_items()
    s = sc.generate(items, classes, 64, SPEC, "train")
    assert s.images.shape == (64, 1, 40, 40) and s.images.dtype == torch.uint8
    assert s.masks.shape == (64, 40, 40) and int(s.masks.max()) <= 10
    # item pixels (200) are exactly the labelled ones; background (noise, faint fragments)
    # stays below the item brightness and is labelled 0
    assert torch.equal(s.masks > 0, s.images[:, 0] == 200)
    assert int(s.images[:, 0][s.masks == 0].max()) <= max(SPEC.noise, 0.35 * 200) + 1
    assert int(s.images[:, 0][s.masks == 0].max()) > SPEC.noise + 1  # fragments are there
    placed = (s.labels > 0).sum(1) + s.dropped
    assert int(placed.min()) >= 2 and int(placed.max()) <= 6
    assert len(set(placed.tolist())) > 2


def test_deterministic_and_prefix_stable():
    items, classes = block_items()
    a = sc.generate(items, classes, 1030, sc.SceneSpec(canvas=28, fragments=0), "val")
    b = sc.generate(items, classes, 1026, sc.SceneSpec(canvas=28, fragments=0), "val")
    for x, y in zip(a.to_dict().values(), b.to_dict().values()):
        assert torch.equal(x[:1026], y)
    c = sc.generate(items, classes, 30, sc.SceneSpec(canvas=28, fragments=0), "train")
    d = sc.generate(items, classes, 30, sc.SceneSpec(canvas=28, fragments=0, seed=1), "val")
    assert not torch.equal(c.masks, a.masks[:30]) and not torch.equal(d.masks, a.masks[:30])


def test_cache_written_once_reused_and_keyed(tmp_path, monkeypatch):
    items, classes = block_items()
    first = sc.cached_scenes(tmp_path, items, classes, 20, SPEC, "train")
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob(".*"))  # no temporary file left

    def fail(*args, **kwargs):
        raise AssertionError("generated again instead of read from the cache")

    monkeypatch.setattr(sc, "generate", fail)
    again = sc.cached_scenes(tmp_path, items, classes, 20, SPEC, "train")
    assert torch.equal(first.masks, again.masks) and torch.equal(first.boxes, again.boxes)
    monkeypatch.undo()
    sc.cached_scenes(tmp_path, items, classes, 20, sc.SceneSpec(canvas=32, seed=7), "train")
    sc.cached_scenes(tmp_path, items, classes.flip(0), 20, SPEC, "train")  # other source
    assert len(list(tmp_path.glob("*.pt"))) == 3
    files[0].write_bytes(b"damaged")
    fixed = sc.cached_scenes(tmp_path, items, classes, 20, SPEC, "train")
    assert torch.equal(fixed.images, first.images)


def test_bad_settings_are_user_errors():
    items, classes = block_items()
    with pytest.raises(UserError, match="canvas"):
        sc.generate(items, classes, 4, sc.SceneSpec(canvas=20), "train")
    with pytest.raises(UserError, match="items"):
        sc.generate(items, classes, 4, sc.SceneSpec(min_items=3, max_items=2), "train")

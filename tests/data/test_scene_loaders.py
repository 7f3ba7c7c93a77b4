"""scenes_seg / scenes_det loaders and the joint (image, label map, boxes) augmentation."""

from __future__ import annotations

import torch

from kdlab.core.config import DataConfig
from kdlab.data import build_loaders, describe
from kdlab.data.dense_augment import JointCropFlip, resolve, warp, warp_boxes
from kdlab.data.dense_loader import box_targets
from kdlab.data.scene_sets import load_scenes
from support.data import tiny_fashion

CPU = torch.device("cpu")


def config(root, **kw) -> DataConfig:
    base = dict(name="scenes_seg", root=str(root), download=False, canvas=32, scenes_train=40,
                scenes_val=13, batch_size=8, eval_batch_size=5)
    return DataConfig(**{**base, **kw})


def test_registered_infos():
    seg, det = describe("scenes_seg"), describe("scenes_det")
    assert (seg.task, seg.num_classes, seg.ignore_index, seg.in_channels) == (
        "segmentation", 11, 255, 1)
    assert (det.task, det.num_classes, det.input_size) == ("detection", 10, 64)


def test_seg_val_is_the_stored_scenes_and_train_is_deterministic(tmp_path):
    tiny_fashion(tmp_path)
    cfg = config(tmp_path)
    loaders = build_loaders(cfg, CPU, seed=3)
    assert loaders.info.input_size == 32 and loaders.info.val_size == 13
    _, val_set = load_scenes(cfg)
    x, y, idx = (torch.cat(t) for t in zip(*list(loaders.val)))
    assert idx.tolist() == list(range(13)) and y.dtype == torch.int64
    assert torch.equal(y, val_set.masks.long())
    torch.testing.assert_close(x, (val_set.images.float() / 255 - 0.206) / 0.287)
    loaders.train.set_epoch(2)
    a = list(loaders.train)
    loaders.train.set_epoch(2)
    b = list(loaders.train)
    assert all(torch.equal(p, q) for u, v in zip(a, b) for p, q in zip(u, v))
    # augmentation is per dataset index: a batch size of 4 gives the same samples
    other = build_loaders(config(tmp_path, batch_size=4), CPU, seed=3).train
    other.set_epoch(2)
    c = list(other)
    assert torch.equal(torch.cat([t[1] for t in a]), torch.cat([t[1] for t in c]))
    assert (torch.cat([t[1] for t in a]) == 255).any()  # padding became the ignore index


def test_seg_shards_cover_the_split(tmp_path):
    tiny_fashion(tmp_path)
    seen = []
    for rank in range(3):
        loaders = build_loaders(config(tmp_path), CPU, rank=rank, world_size=3)
        seen += [int(i) for batch in loaders.val for i in batch[2]]
        assert len(loaders.train) == 1  # ceil(40 / 3) = 14 per rank, batches of 8
    assert sorted(seen) == list(range(13))


def test_det_targets_follow_the_flip_and_crop(tmp_path):
    tiny_fashion(tmp_path)
    cfg = config(tmp_path, name="scenes_det")
    loaders = build_loaders(cfg, CPU)
    train_set, val_set = load_scenes(cfg)
    images, targets, index = next(iter(loaders.val))
    for t, i in zip(targets, index.tolist()):
        n = int((val_set.labels[i] > 0).sum())
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert torch.equal(t["boxes"], val_set.boxes[i, :n])
        assert torch.equal(t["labels"], val_set.labels[i, :n])
    # training: each box is the bounding box of its item's pixels after the same crop/flip
    # (checked on the label map warped alongside, where items of one class do not overlap)
    aug = JointCropFlip(pad=2)
    params = resolve(aug, aug.draw(40, torch.Generator().manual_seed(0)), 32, 32)
    _, warped = warp(train_set.images, train_set.masks, params, 2, 255)
    boxes = warp_boxes(train_set.boxes, params, 32, 32, 2)
    checked = 0
    for i, t in enumerate(box_targets(boxes, train_set.labels)):
        for box, label in zip(t["boxes"], t["labels"]):
            if int((train_set.labels[i] == label).sum()) != 1 or train_set.dropped[i]:
                continue
            ys, xs = torch.nonzero(warped[i] == label, as_tuple=True)
            pixels = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            if box[0] > 0 and box[1] > 0 and box[2] < 32 and box[3] < 32:  # not cut
                assert torch.equal(box, pixels)
                checked += 1
            else:  # a cut box is the crop of the box: it holds the item's remaining pixels
                assert (box[:2] <= pixels[:2]).all() and (box[2:] >= pixels[2:]).all()
    assert checked > 10
    batch = next(iter(loaders.train))
    assert isinstance(batch[1], list) and len(batch[1]) == 8


def test_warp_exact_path_equals_grid_path_and_mask_follows_image():
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 5, (6, 12, 12), generator=g, dtype=torch.uint8)
    images = (masks * 40 + 10)[:, None]  # the image is a function of the label map
    aug = JointCropFlip(pad=3)
    s, dy, dx, flip = resolve(aug, aug.draw(6, g), 12, 12)
    assert flip.any() and (~flip).any() and (dx != 3).any()
    xi, mi = warp(images, masks, (s, dy, dx, flip), 3, 255)
    assert torch.equal(xi[:, 0] == 0, mi == 255)
    assert torch.equal(xi[:, 0][mi != 255], (mi[mi != 255] * 40 + 10).to(torch.uint8))
    gx, gm = warp(images, masks, (s, dy, dx, flip), 3, 255, scaled=True)  # grid_sample
    torch.testing.assert_close(gx, xi.float(), atol=1e-3, rtol=0)
    assert torch.equal(gm, mi)


def test_random_scale_moves_boxes_with_the_pixels():
    masks = torch.zeros(4, 32, 32, dtype=torch.uint8)
    masks[:, 8:20, 5:15] = 3
    boxes = torch.tensor([[[5.0, 8.0, 15.0, 20.0]]]).repeat(4, 1, 1)
    aug = JointCropFlip(pad=4, scale=(0.5, 2.0))
    params = resolve(aug, aug.draw(4, torch.Generator().manual_seed(2)), 32, 32)
    images, warped = warp(masks[:, None] * 50, masks, params, 4, 255)
    assert images.dtype == torch.float32 and not torch.equal(params[0], torch.ones(4))
    out = warp_boxes(boxes, params, 32, 32, 4)
    for i in range(4):
        ys, xs = torch.nonzero(warped[i] == 3, as_tuple=True)
        if len(xs) == 0:
            assert (out[i, 0, 2] - out[i, 0, 0]) * (out[i, 0, 3] - out[i, 0, 1]) < 4
            continue
        pixel_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert (out[i, 0] - pixel_box).abs().max() <= 1.0


def test_scaled_training_batches(tmp_path, monkeypatch):
    from kdlab.tasks.detection.datasets.scenes import ScenesDet
    from kdlab.tasks.segmentation.datasets.scenes import ScenesSeg

    tiny_fashion(tmp_path)
    monkeypatch.setattr(ScenesSeg, "scale", (0.75, 1.5))
    monkeypatch.setattr(ScenesDet, "scale", (0.75, 1.5))
    x, y, _ = next(iter(build_loaders(config(tmp_path), CPU).train))
    assert x.shape == (8, 1, 32, 32) and y.shape == (8, 32, 32) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(range(11)) | {255}
    _, targets, _ = next(iter(build_loaders(config(tmp_path, name="scenes_det"), CPU).train))
    for t in targets:
        b = t["boxes"]
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert b.min() >= 0 and b.max() <= 32

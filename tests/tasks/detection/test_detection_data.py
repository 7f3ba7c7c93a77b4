"""COCO and Pascal VOC detection datasets on tiny folder layouts written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.core.config import DataConfig
from kdlab.data import build_loaders, describe
from kdlab.errors import UserError
from kdlab.tasks.detection.datasets.folders import detection_transforms


def _image(path, w, h, seed):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 255, (h, w, 3), dtype=torch.uint8, generator=g)
    Image.fromarray(pixels.numpy()).save(path)


def _coco(root):
    for split, n in (("train2017", 3), ("val2017", 2)):
        (root / split).mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            _image(root / split / f"{i}.png", 40 + 8 * i, 30, i)
            images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 40 + 8 * i,
                           "height": 30})
            if split == "train2017" and i == 2:
                continue  # an image without annotations: left out of training
            anns.append({"id": 100 + i, "image_id": 10 + i, "category_id": 3 + i,
                         "bbox": [2.0, 4.0, 10.0, 12.0], "area": 99.0, "iscrowd": 0})
            anns.append({"id": 200 + i, "image_id": 10 + i, "category_id": 1,
                         "bbox": [20.0, 1.0, 5.0, 6.0], "area": 25.0, "iscrowd": 1})
        (root / "annotations").mkdir(exist_ok=True)
        cats = [{"id": c, "name": f"c{c}"} for c in (1, 3, 4, 5)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _voc(root):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for i, name in enumerate(names):
            _image(base / "JPEGImages" / f"{name}.jpg", 50, 40, i)
            (base / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename><size><width>50</width>"
                "<height>40</height><depth>3</depth></size><object><name>dog</name>"
                "<difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax>"
                "<ymax>30</ymax></bndbox></object></annotation>")


def test_coco_batches_hold_lists_of_images_and_box_targets(tmp_path):
    _coco(tmp_path)
    cfg = DataConfig(name="coco", root=str(tmp_path), batch_size=2, eval_batch_size=2,
                     num_workers=0, augment=False)
    loaders = build_loaders(cfg, torch.device("cpu"))
    assert loaders.info.task == "detection" and loaders.info.num_classes == 90
    assert loaders.info.train_size == 2  # the image without annotations is left out
    images, targets, index = next(iter(loaders.val))
    assert [tuple(im.shape) for im in images] == [(3, 30, 40), (3, 30, 48)]
    assert images[0].dtype == torch.float32
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[2.0, 4, 12, 16],
                                                                  [20.0, 1, 25, 7]]))
    assert targets[1]["labels"].tolist() == [4, 1]  # COCO category ids
    assert targets[0]["iscrowd"].tolist() == [0, 1]
    torch.testing.assert_close(targets[0]["area"], torch.tensor([99.0, 25.0]))
    assert index.tolist() == [0, 1]


def test_coco_raw_pixels_for_detectors_that_normalise_themselves(tmp_path):
    """data.pixel_mean 0 / pixel_std 1 hand the decoded RGB pixels on 0..255 (Detectron2's
    input; the detector's pixel options normalise), channel_order bgr reverses them."""
    _coco(tmp_path)
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "val2017" / "0.png")))
    raw = raw.permute(2, 0, 1).float()
    for order, want in (("rgb", raw), ("bgr", raw.flip(0))):
        cfg = DataConfig(name="coco", root=str(tmp_path), batch_size=2, eval_batch_size=2,
                         num_workers=0, augment=False, pixel_mean=[0.0, 0.0, 0.0],
                         pixel_std=[1.0, 1.0, 1.0], channel_order=order)
        images, _, _ = next(iter(build_loaders(cfg, torch.device("cpu")).val))
        torch.testing.assert_close(images[0], want)


def test_voc_labels_follow_torchvision_class_order(tmp_path):
    _voc(tmp_path)
    assert describe("voc2012").num_classes == 20
    cfg = DataConfig(name="voc2012", root=str(tmp_path), batch_size=1, eval_batch_size=1,
                     num_workers=0)
    images, targets, _ = next(iter(build_loaders(cfg, torch.device("cpu")).val))
    assert images[0].shape == (3, 40, 50)
    assert targets[0]["labels"].tolist() == [12]  # "dog", 1-based after __background__
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[5.0, 6, 25, 30]]))


def test_missing_folders_are_user_errors(tmp_path):
    cfg = DataConfig(name="coco", root=str(tmp_path / "nope"), num_workers=0)
    with pytest.raises(UserError, match="instances_train2017.json"):
        build_loaders(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="VOCdevkit"):
        build_loaders(DataConfig(name="voc2007", root=str(tmp_path), num_workers=0),
                      torch.device("cpu"))


def test_boxes_follow_resize_and_flip():
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.zeros(3, 20, 40, dtype=torch.uint8))
    image[:, 2:6, 4:14] = 255  # the object's pixels
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[4.0, 2, 14, 6]]), format="XYXY",
                                     canvas_size=(20, 40))
    target = {"boxes": boxes, "labels": torch.tensor([1])}
    torch.manual_seed(0)
    flips = 0
    for _ in range(8):
        out, t = detection_transforms(True, True, resize=(40, 200))(image, target)
        assert out.shape == (3, 40, 80)
        x1, y1, x2, y2 = t["boxes"][0].tolist()
        ys, xs = torch.nonzero(out[0] > 127, as_tuple=True)  # the object's pixels now
        seen = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert seen == pytest.approx([x1, y1, x2, y2], abs=1.0)
        assert (x2 - x1, y2 - y1) == (20.0, 8.0)
        flips += x1 > 40
    assert 0 < flips < 8

"""Where each ground-truth box is pooled from and how well an anchor fits it (issue 21), for
every registered detector at its own input size, on generated Fashion-MNIST scenes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.data import fashion_mnist as fm
from kdlab.data import scenes as sc
from kdlab.models import MODELS, build_model, model_task
from kdlab.tasks.detection.models.builders import pooled_levels
from kdlab.tasks.detection.models.geometry import box_geometry

DETECTORS = [n for n in MODELS.names() if model_task(n) == "detection"]
TINY = [n for n in DETECTORS if n.startswith("frcnn_tiny")]
FILES = fm.find_files(fm.DEBIAN_DIR)
needs_fashion = pytest.mark.skipif(FILES is None, reason="Debian package dataset-fashion-mnist "
                                   "not installed (the scenes need real item shapes)")


def scene_batch(n: int, size: int, channels: int) -> tuple[torch.Tensor, list[dict]]:
    """``n`` validation scenes of the default generator (64x64), resized to ``size`` pixels
    with their boxes (so every detector sees the scenes' geometry at its own input size)."""
    _, (xv, yv) = fm.load_folder(FILES)
    s = sc.generate(xv, yv, n, sc.SceneSpec(), "val")
    images = s.images.float() / 255
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    scale = size / s.images.shape[-1]
    targets = [{"boxes": s.boxes[i][s.labels[i] > 0] * scale,
                "labels": s.labels[i][s.labels[i] > 0]} for i in range(n)]
    return images.expand(-1, channels, -1, -1), targets


def geometry(name: str, n: int):
    tiny = name in TINY
    size = 64 if tiny else 800  # each builder's own input size (its default)
    det = build_model(name, num_classes=10, in_channels=1 if tiny else 3, input_size=size)
    return box_geometry(det, *scene_batch(n, size, 1 if tiny else 3))


@needs_fashion
@pytest.mark.parametrize("name", TINY)
def test_tiny_detectors_pool_every_box_from_enough_cells_and_match_an_anchor(name):
    g = geometry(name, 128)
    assert len(g.side) > 300
    # a 64-pixel canvas holds no box of 112 px or more, so FPN Eq. 1 (s0 = 224) pools every
    # box from the stride-4 level, and the pooler reads that level alone: none starves
    assert g.pooled_levels == ["0"] and g.pooled_strides == [4.0]
    assert g.level_counts() == {"0": len(g.side)}
    # the boxes span 3+ cells of that level (the shipped s0 = 18 put 79 % of them on the
    # stride-16 level, 1-2 cells per side)
    assert (g.cells >= 3).float().mean() > 0.95
    # nearly every box has an anchor at the RPN's positive IoU (the shipped anchors gave 6 %
    # of them one at 0.7), most a good one, and the best anchors of the boxes share the two
    # finest levels (anchors 12-20 px at stride 4, 24-40 px at stride 8)
    assert g.rpn_fg_iou == 0.5 and g.positive_fraction() > 0.98
    assert g.best_iou.median() > 0.7
    counts = g.anchor_level_counts()
    assert min(counts["0"], counts["1"]) > 0.2 * len(g.side), counts


@needs_fashion
@pytest.mark.parametrize("name", [n for n in DETECTORS if n not in TINY])
def test_coco_detectors_keep_torchvisions_geometry_at_800_pixels(name):
    """torchvision's Faster R-CNNs are kept as they are (FCFD App. D's protocol): s0 = 224,
    one anchor size per level, RPN positive IoU 0.7. Scenes scaled to 800 pixels (boxes of
    87-344 px) are pooled from 14+ cells of a stride-4..16 level (MobileNetV3's FPN reads two
    stride-32 maps: 2.7+ cells), and every box has an anchor above IoU 0.5 (half of them at
    0.7: the matcher's best-anchor fallback serves the others, as in torchvision)."""
    g = geometry(name, 4)  # ~20 boxes: a backbone pass at 800 px is the test's cost
    pool = build_model(name, num_classes=10, input_size=800).net.roi_heads.box_roi_pool
    assert pool.canonical_scale == 224 and pool.canonical_level == 4
    assert g.rpn_fg_iou == 0.7
    assert (g.cells >= (2.5 if g.pooled_strides[0] == 32 else 14)).all(), g.cells.min()
    assert (g.best_iou > 0.5).all() and g.best_iou.median() > 0.65


def test_pooled_levels_follow_the_input_size():
    assert pooled_levels(64, 224) == ("0",)
    assert pooled_levels(128, 224) == ("0", "1")
    assert pooled_levels(256, 224) == ("0", "1", "2")
    assert pooled_levels(800, 224) == ("0", "1", "2", "3")
    assert pooled_levels(16, 224) == ("0",)

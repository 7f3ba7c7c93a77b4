"""CIRKD's training input (winycg/CIRKD @ 48eb81b ``dataset/cityscapes.py``): the whole image
scaled by a factor of a discrete set, bottom/right padding with the mean colour (0 after
mean subtraction) and the ignore label, a random crop, a flip; BGR channels minus the mean,
no std, on the 0..255 scale. The transform alone, then through the Cityscapes loader on a
fake folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.data import build_loaders
from kdlab.errors import UserError
from kdlab.tasks.segmentation.datasets.scale_crop import PADDED, ScaleCropFlip, fill_padding
from tasks.segmentation.test_seg_datasets import CPU, code, config, fake_layout

CIRKD_MEAN = [104.00698793, 116.66876762, 122.67891434]  # BGR, dataset/cityscapes.py:69
CIRKD_SCALES = [0.5 + i / 10 for i in range(16)]  # 0.5 + randint(0, 15) / 10


def _image(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            torch.randint(0, 19, (h, w), generator=g))


def test_the_factor_comes_from_the_set_and_scales_the_whole_image():
    image, labels = _image(20, 30)
    sizes = set()
    for seed in range(60):
        torch.manual_seed(seed)
        out, lab = ScaleCropFlip((80, 80), [0.5, 1.0, 2.0], ignore=255, pad="zero")(image, labels)
        assert out.shape == (3, 80, 80) and lab.shape == (80, 80) and out.dtype == torch.uint8
        known = lab != 255  # the crop is larger than any scaled image: all of it is kept
        rows, cols = known.any(1).nonzero(), known.any(0).nonzero()
        sizes.add((int(rows.max()) + 1, int(cols.max()) - int(cols.min()) + 1))
        assert int(rows.min()) == 0  # padding at the bottom only (and right, or mirrored)
    assert sizes == {(10, 15), (20, 30), (40, 60)}


def test_bottom_right_padding_with_the_mean_colour_after_normalisation():
    image, labels = _image(6, 8)
    torch.manual_seed(0)
    t = ScaleCropFlip((10, 12), [1.0], ignore=255, pad="mean")
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out, lab = t(image, labels)
        padded = lab == PADDED
        flipped = bool(padded[0, 0])
        seen.add(flipped)
        cols = slice(0, 4) if flipped else slice(8, 12)  # right, or left when mirrored
        assert padded[6:].all() and padded[:, cols].all() and int(padded.sum()) == 120 - 48
        normalised = out[None].float() - 100.0
        images, targets = fill_padding(normalised, lab[None], ignore=255)
        assert (images[0][:, padded] == 0).all() and (targets[0][padded] == 255).all()
        assert torch.equal(images[0][:, ~padded], normalised[0][:, ~padded])
    assert seen == {False, True}


def test_cirkds_input_through_the_cityscapes_loader(tmp_path):
    data = fake_layout(tmp_path, "cityscapes")
    cfg = config(tmp_path, "cityscapes", batch_size=1, channel_order="bgr",
                 pixel_mean=CIRKD_MEAN, pixel_std=[1.0, 1.0, 1.0], scales=[1.0], pad="mean",
                 crop=[30, 32])
    loaders = build_loaders(cfg, CPU, seed=0)
    for images, labels, index in loaders.train:
        assert images.shape == (1, 3, 30, 32)
        known = labels[0] != 255
        red = images[0, 2] + CIRKD_MEAN[2]  # BGR: red is the last channel, no std
        torch.testing.assert_close(red[known], code(labels[0]).float()[known], atol=1e-3,
                                   rtol=0)
        h, w = data["train"][int(index)][1].shape
        if h < 30:  # padded rows: exactly the mean colour, ignored
            assert (images[0, :, h:] == 0).all() and (labels[0, h:] == 255).all()
    images, labels, _ = next(iter(loaders.val))  # validation: whole images, same input
    image, train = data["val"][0]
    h, w = train.shape
    bgr = torch.from_numpy(image[..., ::-1].astype(np.float64).copy()).permute(2, 0, 1)
    expected = (bgr - torch.tensor(CIRKD_MEAN, dtype=torch.float64)[:, None, None]).float()
    torch.testing.assert_close(images[0, :, :h, :w], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kw", "match"), [
    ({"pad": "mean"}, "data.scales"),
    ({"pad": "edge", "scales": [1.0]}, "data.pad"),
    ({"channel_order": "rbg"}, "channel_order"),
    ({"pixel_std": [1.0, 1.0, 1.0]}, "pixel_mean"),
    ({"pixel_mean": [1.0, 2.0]}, "one per channel"),
    ({"crop": [4]}, "height, width"),
])
def test_input_setting_mistakes_are_user_errors(tmp_path, kw, match):
    fake_layout(tmp_path, "cityscapes")
    with pytest.raises(UserError, match=match):
        build_loaders(config(tmp_path, "cityscapes", **kw), CPU)


def test_only_the_segmentation_folders_take_input_settings(tmp_path):
    from kdlab.core.config import RunConfig, build_dataclass
    from kdlab.training.validate import validate_config

    tree = {"data": {"name": "synthetic", "scales": [1.0]}, "model": {"student": "resnet8"},
            "method": {"name": "ce"}, "train": {"out_dir": str(tmp_path / "r")}}
    with pytest.raises(UserError, match="data.scales is read by the segmentation folder"):
        validate_config(build_dataclass(RunConfig, tree, where="config"))

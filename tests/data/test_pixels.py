"""Image range: uint8 is divided by 255 once, float must already be in [0, 1]."""

from __future__ import annotations

import pytest
import torch

from kdlab.core.config import DataConfig
from kdlab.data.pixels import pixel_scale
from kdlab.errors import UserError
from kdlab.tasks.classification.datasets.synthetic import Synthetic, generate

CPU = torch.device("cpu")


class FloatSynthetic(Synthetic):
    """The synthetic set as float images: ``generate()``'s uint8 divided by ``divisor``."""

    divisor = 255.0

    def load(self, cfg):  # noqa: ANN001
        (xt, yt), (xv, yv) = generate()
        return (xt.float() / self.divisor, yt), (xv.float() / self.divisor, yv)


def batches(source, **kw):  # noqa: ANN001
    cfg = DataConfig(name="synthetic", batch_size=64, train_subset=256, val_subset=64, **kw)
    loaders = source.build(cfg, CPU, seed=0, rank=0, world_size=1)
    loaders.train.set_epoch(1)
    return [b[0] for b in loaders.train], [b[0] for b in loaders.val]


def test_float_images_in_0_1_are_not_divided_by_255_again():
    # the bug of issue 12: float [0, 1] images came out with mean -1.99 and std 0.0045
    want_train, want_val = batches(Synthetic())
    got_train, got_val = batches(FloatSynthetic())
    for want, got in zip(want_train + want_val, got_train + got_val, strict=True):
        assert torch.equal(want, got)  # augmented (crop) batches too
    assert 0.3 < torch.cat(got_train).std().item() < 3


def test_float_images_on_the_0_255_scale_are_refused():
    source = FloatSynthetic()
    source.divisor = 1.0
    with pytest.raises(UserError, match="looks like the 0..255 scale; divide them by 255"):
        batches(source)


@pytest.mark.parametrize(("images", "match"), [
    (torch.tensor([0.0, 0.5, 1.0]), None),
    (torch.tensor([0, 128, 255], dtype=torch.uint8), None),
    (torch.tensor([0.0, 12.0, 254.0]), "0..255 scale"),
    (torch.tensor([-1.9, 0.0, 2.3]), "data.normalized=true"),
    (torch.tensor([0, 1, 2]), "int64 tensors"),
])
def test_pixel_scale(images, match):
    if match is None:
        assert pixel_scale(images, "the images") == (255.0 if images.dtype == torch.uint8 else 1)
    else:
        with pytest.raises(UserError, match=match):
            pixel_scale(images, "the images")

"""A small generated dataset for tests: learnable, deterministic, no files needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.core.config import DataConfig
from kdlab.data.augment import CropFlip
from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.loaders import Split, TensorSource

TRAIN_SIZE, VAL_SIZE, SIZE, CLASSES, CHANNELS = 1024, 256, 16, 10, 3
NOISE = 0.15  # per-pixel Gaussian noise on the [0, 1] scale
GENERATOR_SEED = 20230501  # fixed: the data never depends on the run's seed


def make_split(n: int, prototypes: torch.Tensor, g: torch.Generator) -> Split:
    """``n`` samples, classes balanced: the class prototype plus noise, as uint8."""
    labels = (torch.arange(n) % CLASSES)[torch.randperm(n, generator=g)]
    noise = NOISE * torch.randn(n, CHANNELS, SIZE, SIZE, generator=g)
    images = (prototypes[labels] + noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels.to(torch.int64)


def generate() -> tuple[Split, Split]:
    """Class prototypes are smooth colour patterns (a random 4x4 grid, bilinearly upsampled)."""
    g = torch.Generator().manual_seed(GENERATOR_SEED)
    coarse = 0.15 + 0.7 * torch.rand(CLASSES, CHANNELS, 4, 4, generator=g)
    prototypes = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return make_split(TRAIN_SIZE, prototypes, g), make_split(VAL_SIZE, prototypes, g)


@DATASETS.register("synthetic")
class Synthetic(TensorSource):
    """Synthetic 3x16x16, 10 classes, 1024 train / 256 val (class patterns + noise), for tests.

    Augmentation: random crop with 1-pixel zero padding, no flip (the patterns are not
    mirror-symmetric, so a flip would change what a class looks like).
    """

    info = DatasetInfo(name="synthetic", num_classes=CLASSES, in_channels=CHANNELS,
                       input_size=SIZE, train_size=TRAIN_SIZE, val_size=VAL_SIZE,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    augmentation = CropFlip(pad=1, flip=False)

    def load(self, cfg: DataConfig) -> tuple[Split, Split]:
        return generate()

"""The training augmentation of the dilated-network segmentation code (PSPNet, the SKD authors,
CIRKD): the whole image scaled by a factor from a discrete set, padded at the bottom and right
to the crop, a random crop, a random horizontal flip.

CIRKD @ 48eb81b ``dataset/cityscapes.py`` (``CSTrainValSet``): factor ``0.5 + randint(0, 15) /
10``, i.e. one of 0.5, 0.6, ..., 2.0 with equal probability (the SKD authors' Cityscapes set:
0.7 ... 2.1); the image resized bilinearly (OpenCV ``INTER_LINEAR``, no antialiasing), the
label map by nearest neighbour, both to ``round(size * factor)``; padding to the crop size at
the bottom and right only, the image with 0 after its mean was subtracted (the mean colour),
the labels with the ignore value; crop offsets uniform over the valid range; flip with
probability 1/2.

Here: the image stays uint8 (bilinear in float32, rounded back, as OpenCV's uint8 resize
rounds), so pixel values can differ from OpenCV's by its fixed-point rounding and by its
coordinate scale (``1 / factor``; here the size ratio). With ``pad="mean"`` padded pixels get
the label :data:`PADDED` and the loader sets them to 0 after normalisation (exactly the mean
colour) and their labels to the ignore value (:func:`fill_padding`); ``pad="zero"`` pads
with black. Random draws come from torch's generator, which the dataset seeds per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: the label of pixels padded with the mean colour, until the loader fills them
PADDED = -1
#: the padding colours of the crop
PADS = ("zero", "mean")


class ScaleCropFlip:
    """``(uint8 image (C, H, W), labels (H, W)) -> (uint8 image, int64 labels)`` at ``crop``."""

    def __init__(self, crop: tuple[int, int], scales: Sequence[float], *, ignore: int,
                 pad: str = "zero") -> None:
        self.crop, self.scales, self.ignore, self.pad = crop, list(scales), ignore, pad

    def __call__(self, image: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        image = image.as_subclass(Tensor)
        labels = labels.as_subclass(Tensor).long()
        factor = self.scales[int(torch.randint(len(self.scales), ()))]
        h, w = image.shape[-2:]
        size = (int(round(h * factor)), int(round(w * factor)))
        if size != (h, w):
            scaled = F.interpolate(image[None].float(), size=size, mode="bilinear",
                                   align_corners=False, antialias=False)
            image = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
            labels = F.interpolate(labels[None, None].float(), size=size,
                                   mode="nearest")[0, 0].long()
        image, labels = self._pad(image, labels)
        ch, cw = self.crop
        y = int(torch.randint(image.shape[-2] - ch + 1, ()))
        x = int(torch.randint(image.shape[-1] - cw + 1, ()))
        image, labels = image[:, y:y + ch, x:x + cw], labels[y:y + ch, x:x + cw]
        if torch.rand(()) < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
        return image.contiguous(), labels.contiguous()

    def _pad(self, image: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Pad at the bottom and right up to the crop."""
        ph = max(self.crop[0] - image.shape[-2], 0)
        pw = max(self.crop[1] - image.shape[-1], 0)
        if not (ph or pw):
            return image, labels
        marker = PADDED if self.pad == "mean" else self.ignore
        return (F.pad(image, (0, pw, 0, ph), value=0),
                F.pad(labels, (0, pw, 0, ph), value=marker))


def fill_padding(images: Tensor, targets: Tensor, ignore: int) -> tuple[Tensor, Tensor]:
    """Normalised ``images`` with the :data:`PADDED` pixels set to 0 (the mean colour) and
    those labels set to ``ignore``."""
    padded = targets == PADDED
    if not bool(padded.any()):
        return images, targets
    return (images.masked_fill(padded.unsqueeze(1), 0.0),
            targets.masked_fill(padded, ignore))

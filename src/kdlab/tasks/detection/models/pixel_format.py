"""The pixels a detector reads: channel order, mean and std inside the detector (Detectron2's way).

Detectron2 normalises inside the model (``GeneralizedRCNN.preprocess_image``: ``(x -
MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD`` on 0..255 pixels in ``INPUT.FORMAT`` order; detectron2 @
d1e04565 ``modeling/meta_arch/rcnn.py``, ``config/defaults.py``: BGR, mean [103.530, 116.280,
123.675], std [1, 1, 1] for the MSRA / model-zoo weights). A kdlab detector built with the
``input_format`` / ``pixel_mean`` / ``pixel_std`` options does the same in its
``GeneralizedRCNNTransform`` (:class:`PixelTransform`), and then expects raw RGB pixels on the
0..255 scale from the loader (``data.pixel_mean: [0, 0, 0]``, ``data.pixel_std: [1, 1, 1]``).
Without those options a detector normalises nothing (the loader did: kdlab's default).

Teacher and student may read different formats (the FCFD authors' R-18 student reads RGB with
a std, their teachers BGR without; ``RCNNKD.teacher_preprocess_image`` in LiuDongyang6/FCFD @
2aefb7b ``detection/model/rcnn.py``). A teacher that sees the student's resized batch gets it
through :func:`convert_batch`: the student's normalisation undone, the teacher's applied, the
padding left at 0 as Detectron2 pads each network's normalised images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform


@dataclass(frozen=True)
class PixelFormat:
    """``bgr``: the channels are reversed before normalising; ``mean`` / ``std`` per channel in
    the order the network reads, on the loader's scale (identity: ``mean`` 0, ``std`` 1)."""

    bgr: bool = False
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std rounded to float32 first, as Detectron2 keeps them (float32 buffers,
        ``pixel_mean`` / ``pixel_std`` of ``GeneralizedRCNN``; a ``.double()`` model converts
        the rounded values), then in ``x``'s dtype."""
        def stat(v: tuple[float, ...]) -> Tensor:
            return torch.tensor(v, dtype=torch.float32).to(x.device, x.dtype).view(-1, 1, 1)

        return stat(self.mean), stat(self.std)

    def apply(self, x: Tensor) -> Tensor:
        """Loader pixels ``(..., C, H, W)`` -> what the network reads."""
        x = x.flip(-3) if self.bgr else x
        mean, std = self._stats(x)
        return (x - mean) / std

    def undo(self, x: Tensor) -> Tensor:
        """What the network reads -> loader pixels."""
        mean, std = self._stats(x)
        x = x * std + mean
        return x.flip(-3) if self.bgr else x


class PixelTransform(GeneralizedRCNNTransform):
    """torchvision's resize-and-batch transform normalising with a :class:`PixelFormat`."""

    def __init__(self, fmt: PixelFormat, **kwargs: object) -> None:
        super().__init__(image_mean=list(fmt.mean), image_std=list(fmt.std), **kwargs)
        self.pixel_format = fmt

    def normalize(self, image: Tensor) -> Tensor:
        return self.pixel_format.apply(image)


def pixel_format_of(transform: GeneralizedRCNNTransform) -> PixelFormat:
    """The format a detector's transform applies (its mean / std, BGR for a PixelTransform)."""
    fmt = getattr(transform, "pixel_format", None)
    if fmt is not None:
        return fmt
    return PixelFormat(False, tuple(transform.image_mean), tuple(transform.image_std))


def convert_batch(images: Tensor, image_sizes: Sequence[tuple[int, int]], src: PixelFormat,
                  dst: PixelFormat) -> Tensor:
    """A padded batch normalised as ``src`` reads it, normalised as ``dst`` reads it; each
    image's padding (outside ``image_sizes``) stays 0. ``images`` itself when the formats
    agree."""
    if src == dst:
        return images
    out = torch.zeros_like(images)
    for i, (h, w) in enumerate(image_sizes):
        out[i, :, :h, :w] = dst.apply(src.undo(images[i, :, :h, :w]))
    return out


__all__ = ["PixelFormat", "PixelTransform", "convert_batch", "pixel_format_of"]

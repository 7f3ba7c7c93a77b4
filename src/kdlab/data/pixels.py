"""The pixel scale of image tensors: uint8 on 0..255, float on [0, 1], checked once.

Loaders bring images to [0, 1] by dividing by :func:`pixel_scale` before normalising with the
dataset's mean and std: 255 for uint8, 1 for float images already in [0, 1]. A float tensor
whose values look like 0..255, or that lies outside [0, 1] in any other way, is a
:class:`~kdlab.errors.UserError`: dividing it by 255 would train on near-constant inputs
without any sign of it, and dividing it by 1 would feed values the normalisation was not
made for.
"""

from __future__ import annotations

import torch

from kdlab.errors import UserError

#: how far outside [0, 1] a float image may stray (rounding in a user's conversion)
TOLERANCE = 1e-3


def pixel_scale(images: torch.Tensor, what: str) -> float:
    """The divisor that brings ``images`` to [0, 1]: 255 for uint8, 1 for float images in
    [0, 1]; any other dtype or range is a UserError naming ``what`` (e.g. "the training
    images")."""
    if images.dtype == torch.uint8:
        return 255.0
    if not images.is_floating_point():
        raise UserError(f"{what} are {str(images.dtype).removeprefix('torch.')} tensors; give "
                        "uint8 images (0..255) or float images in [0, 1].")
    if images.numel() == 0:
        return 1.0
    lo, hi = (float(v) for v in torch.aminmax(images.detach().float()))
    if lo >= -TOLERANCE and hi <= 1 + TOLERANCE:
        return 1.0
    if lo >= -TOLERANCE and hi <= 255 + TOLERANCE:
        raise UserError(f"{what} are float values up to {hi:g}, which looks like the 0..255 "
                        "scale; divide them by 255 (or give them as uint8) so that kdlab does "
                        "not rescale them a second time.")
    raise UserError(f"{what} range from {lo:g} to {hi:g}, outside [0, 1]; give uint8 or [0, 1] "
                    "images, or set data.normalized=true if they are already normalised.")

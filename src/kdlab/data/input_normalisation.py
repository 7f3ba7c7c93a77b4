"""The pixels a loader of image folders hands over: the dataset's RGB mean / std on the [0, 1]
scale, or ``data.pixel_mean`` / ``pixel_std`` on 0..255 in ``data.channel_order`` (CIRKD's BGR
mean subtraction; raw RGB pixels for detectors that normalise themselves, as Detectron2's do,
with ``pixel_mean: [0, 0, 0]``, ``pixel_std: [1, 1, 1]``)."""

from __future__ import annotations

from collections.abc import Sequence

from kdlab.core.config import DataConfig
from kdlab.errors import UserError


def input_normalisation(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]
                        ) -> tuple[list[float], list[float], float, bool]:
    """``(mean, std, scale, bgr)`` for the loader: the dataset's RGB ``mean`` / ``std`` on the
    [0, 1] scale (reversed for ``channel_order: bgr``), or ``data.pixel_mean`` / ``pixel_std``
    on the 0..255 scale (std 1 when only the mean is given)."""
    bgr = cfg.channel_order == "bgr"
    if cfg.pixel_mean is None:
        if cfg.pixel_std is not None:
            raise UserError("data.pixel_std needs data.pixel_mean (both on the 0..255 scale).")
        order = (lambda v: list(v)[::-1]) if bgr else list
        return order(mean), order(std), 255.0, bgr
    std_given = cfg.pixel_std if cfg.pixel_std is not None else [1.0] * len(cfg.pixel_mean)
    if len(cfg.pixel_mean) != len(mean) or len(std_given) != len(mean):
        raise UserError(f"data.pixel_mean and data.pixel_std need {len(mean)} values (one per "
                        f"channel), got {cfg.pixel_mean} and {cfg.pixel_std}.")
    return list(cfg.pixel_mean), list(std_given), 1.0, bgr

"""Joint batched augmentation of images, label maps and boxes on the device.

One random geometric map per sample is applied identically to the image (bilinear), its
label map (nearest; pixels from outside the image get the ignore index) and its boxes (xyxy,
pixel edges; clipped, and boxes left with no area dropped by the caller). The map is: scale
the image by ``s`` (optional), zero-pad it by ``pad``, take the original-size window at the
integer offset ``(dy, dx)`` and mirror it left-right when ``flip`` is set -- the CropFlip of
:mod:`kdlab.data.augment` plus the random scale of the segmentation recipes. Without scaling
the crop is an exact gather (:func:`kdlab.data.augment.crop_flip`); with it,
``grid_sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdlab.data.augment import crop_flip


@dataclass(frozen=True)
class JointCropFlip:
    """Random scale in ``scale``, crop of the original size from the image padded by ``pad``
    (offsets uniform over the whole padded, scaled image), optional flip."""

    pad: int
    flip: bool = True
    scale: tuple[float, float] = (1.0, 1.0)

    @property
    def scales(self) -> bool:
        return self.scale != (1.0, 1.0)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Per sample: scale ``s``, offset fractions ``ty``, ``tx`` in [0, 1) and flip flags
        (the offsets in pixels depend on the image size, see :func:`offsets`)."""
        lo, hi = self.scale
        s = lo + (hi - lo) * torch.rand(n, generator=generator)
        t = torch.rand(2, n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        return s, t[0], t[1], flips


def offsets(s: torch.Tensor, t: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """Integer crop offsets in ``0..span`` for offset fractions ``t``: ``span`` is how far a
    ``size`` window can move in the scaled, padded image (at scale 1: ``2 * pad``)."""
    span = torch.floor(s * size).to(torch.int64) + 2 * pad - size
    return torch.minimum((t * (span + 1).clamp(min=1)).to(torch.int64), span.clamp(min=0))


def sample_grid(s: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                h: int, w: int, pad: int) -> torch.Tensor:
    """``grid_sample`` grid ``(B, H, W, 2)`` (align_corners=False) of the map: output pixel
    centre -> mirrored window coordinate -> ``+ offset - pad`` -> ``/ s`` in the source."""
    dev = s.device
    u = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    v = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    cu = torch.where(flip[:, None], w - u[None], u[None])  # (B, W)
    xs = (cu + dx[:, None] - pad) / s[:, None]
    ys = (v[None] + dy[:, None] - pad) / s[:, None]  # (B, H)
    gx = (2 * xs / w - 1)[:, None, :].expand(-1, h, -1)
    gy = (2 * ys / h - 1)[:, :, None].expand(-1, -1, w)
    return torch.stack([gx, gy], dim=-1)


def warp_images(images: torch.Tensor, params: tuple[torch.Tensor, ...], pad: int,
                scaled: bool) -> torch.Tensor:
    """Apply each sample's map to ``images`` ``(B, C, H, W)``: an exact gather when not
    ``scaled`` (all scales 1; the dtype is kept), bilinear ``grid_sample`` otherwise
    (float32). Outside the image: 0."""
    s, dy, dx, flip = params
    if not scaled:
        return crop_flip(images, dy, dx, flip, pad)
    grid = sample_grid(s.float(), dy.float(), dx.float(), flip, *images.shape[-2:], pad)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def warp_masks(masks: torch.Tensor, params: tuple[torch.Tensor, ...], pad: int,
               ignore_index: int, scaled: bool) -> torch.Tensor:
    """The same maps on label maps ``(B, H, W)`` (nearest neighbour); int64, pixels from
    outside the image = ``ignore_index``."""
    s, dy, dx, flip = params
    m = masks.to(torch.int64)[:, None] + 1  # 0 marks padding
    if not scaled:
        m = crop_flip(m, dy, dx, flip, pad)[:, 0]
    else:
        grid = sample_grid(s.float(), dy.float(), dx.float(), flip, *masks.shape[-2:], pad)
        m = F.grid_sample(m.float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].round().to(torch.int64)
    return torch.where(m == 0, ignore_index, m - 1)


def warp(images: torch.Tensor, masks: torch.Tensor, params: tuple[torch.Tensor, ...],
         pad: int, ignore_index: int, scaled: bool | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`warp_images` and :func:`warp_masks` with one set of maps (``scaled=None``
    looks at the scales, which costs a device sync)."""
    if scaled is None:
        scaled = not bool((params[0] == 1).all())
    return (warp_images(images, params, pad, scaled),
            warp_masks(masks, params, pad, ignore_index, scaled))


def warp_boxes(boxes: torch.Tensor, params: tuple[torch.Tensor, ...], h: int, w: int,
               pad: int) -> torch.Tensor:
    """The same maps on boxes ``(B, M, 4)`` xyxy in pixel edges, clipped to the output
    (a box that left the window has zero width or height)."""
    s, dy, dx, flip = (p.to(boxes.device) for p in params)
    s, dy, dx = s.float()[:, None], dy.float()[:, None], dx.float()[:, None]
    x1, y1 = boxes[..., 0] * s + pad - dx, boxes[..., 1] * s + pad - dy
    x2, y2 = boxes[..., 2] * s + pad - dx, boxes[..., 3] * s + pad - dy
    f = flip[:, None]
    x1, x2 = torch.where(f, w - x2, x1), torch.where(f, w - x1, x2)
    out = torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], -1)
    return out


def resolve(aug: JointCropFlip, params: tuple[torch.Tensor, ...], h: int, w: int
            ) -> tuple[torch.Tensor, ...]:
    """Drawn ``(s, ty, tx, flip)`` -> ``(s, dy, dx, flip)`` with integer pixel offsets."""
    s, ty, tx, flip = params
    return s, offsets(s, ty, h, aug.pad), offsets(s, tx, w, aug.pad), flip

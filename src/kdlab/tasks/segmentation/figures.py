"""Report pictures and tables of a segmentation run: predictions side by side, per-class IoU."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import Tensor

from kdlab.runtime.files import atomic_write, atomic_write_text

IGNORE_COLOUR = (255, 255, 255)


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours: the Pascal VOC palette (the bits of the class index spread
    over the high bits of R, G and B), so class 0 (background) is black."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, shift = k, 7
        while c:
            for ch in range(3):
                colours[k, ch] |= ((c >> ch) & 1) << shift
            c >>= 3
            shift -= 1
    return colours


def colourise(labels: Tensor, ignore_index: int, n: int) -> np.ndarray:
    """``(H, W)`` labels -> ``(H, W, 3)`` uint8 colours; ignored pixels white."""
    lab = labels.numpy().astype(np.int64)
    out = palette(n)[np.clip(lab, 0, n - 1)]
    out[lab == ignore_index] = IGNORE_COLOUR
    return out


def grey_or_rgb(image: Tensor) -> np.ndarray:
    """A normalised ``(C, H, W)`` image stretched to [0, 1] for display, ``(H, W, 3)``."""
    x = image.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return x.permute(1, 2, 0).numpy()


def legend_handles(present: list[int], n: int, name: Callable[[int], str]) -> list:
    """Colour patches naming the classes ``present`` (at most 40, in label order)."""
    from matplotlib.patches import Patch

    colours = palette(n)
    return [Patch(facecolor=colours[c] / 255, edgecolor="grey", label=name(c))
            for c in sorted(present)[:40]]


def prediction_grid(path: Path, images: Tensor, targets: Tensor, preds: dict[str, Tensor],
                    ignore_index: int, name: Callable[[int], str] = str) -> list[str]:
    """One row per image: the image, its ground truth, then each network's prediction; a
    legend names the colours of the classes shown (``name(label)``), returned in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    valid = targets[targets != ignore_index]
    n = max([int(valid.max()) + 1 if valid.numel() else 1] +
            [int(p.max()) + 1 for p in preds.values()])
    cols = ["image", "ground truth", *preds]
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.2 * len(cols), 2.2 * rows),
                             squeeze=False)
    for i in range(rows):
        panels = [grey_or_rgb(images[i]), colourise(targets[i], ignore_index, n)]
        panels += [colourise(p[i], ignore_index, n) for p in preds.values()]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize="small")
    shown = torch.cat([valid.flatten(), *(p.flatten() for p in preds.values())])
    handles = legend_handles(shown.unique().tolist(), n, name)
    ncol = min(len(handles), 4)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize="x-small",
               frameon=False)
    legend_rows = -(-len(handles) // max(ncol, 1))
    fig.tight_layout(rect=(0, min(0.22 * legend_rows / (2.2 * rows), 0.5), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return [h.get_label() for h in handles]


def class_iou_csv(path: Path, ious: dict[str, Tensor]) -> None:
    """``class,<network>,...`` rows of per-class IoU in percent (empty for an absent class)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", *ious])
    k = max(len(v) for v in ious.values())
    for c in range(k):
        row = [c]
        for v in ious.values():
            x = float(v[c]) if c < len(v) else float("nan")
            row.append("" if np.isnan(x) else f"{100 * x:.2f}")
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


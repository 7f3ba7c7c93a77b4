"""The run report's detection picture: each image's ground truth beside every network's
detections (teacher beside student), boxes labelled with class name and score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

#: box colours: ground truth first, then one per network (teacher, student, ...)
COLOURS = ("tab:green", "tab:blue", "tab:red", "tab:orange", "tab:purple")


def _show(image: Tensor) -> Tensor:
    """A (H, W) or (H, W, 3) picture scaled to [0, 1] per image (inputs are normalised)."""
    x = image.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
    return x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0)


def _boxes(ax: object, boxes: Tensor, labels: Tensor, scores: Tensor | None, colour: str,
           name: Callable[[int], str]) -> list[str]:
    from matplotlib.patches import Rectangle

    texts = []
    for k in range(boxes.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2,  # type: ignore
                               edgecolor=colour))
        text = name(int(labels[k])) + ("" if scores is None else f" {float(scores[k]):.2f}")
        ax.text(x1, y1, text, color="white", fontsize=5, va="bottom",  # type: ignore
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.6, "alpha": 0.8})
        texts.append(text)
    return texts


def draw_detections(path: Path, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]],
                    detections: dict[str, Sequence[dict[str, Tensor]]], *,
                    min_score: float = 0.5, name: Callable[[int], str] = str
                    ) -> dict[str, list[str]]:
    """Write a grid: one row per image, its ground-truth boxes in the first column, then one
    column per network (``detections``: name -> per-image torchvision detections) with the
    boxes scoring at least ``min_score``; every box is labelled ``name(label)`` (and its
    score). Returns each column's title and the box labels drawn in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["ground truth", *detections]
    titles = [c if j == 0 else f"{c} (score >= {min_score:g})" for j, c in enumerate(cols)]
    drawn: dict[str, list[str]] = {t: [] for t in titles}
    rows = len(images)
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.6 * len(cols), 2.6 * rows),
                             squeeze=False)
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        panels = [(target["boxes"], target["labels"], None)]
        for dets in detections.values():
            keep = dets[i]["scores"] >= min_score
            panels.append((dets[i]["boxes"][keep], dets[i]["labels"][keep],
                           dets[i]["scores"][keep]))
        for j, (boxes, labels, scores) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_show(image).numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            drawn[titles[j]] += _boxes(ax, boxes, labels, scores, COLOURS[j % len(COLOURS)],
                                       name)
            if i == 0:
                ax.set_title(titles[j], fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn

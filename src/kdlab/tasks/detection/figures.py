"""The run report's detection picture: images with ground-truth and predicted boxes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

#: box colours: ground truth first, then one per network (teacher, student, ...)
COLOURS = ("tab:green", "tab:blue", "tab:red", "tab:orange", "tab:purple")


def _show(image: Tensor) -> Tensor:
    """A (H, W) or (H, W, 3) picture scaled to [0, 1] per image (inputs are normalised)."""
    x = image.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
    return x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0)


def draw_detections(path: Path, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]],
                    detections: dict[str, Sequence[dict[str, Tensor]]], *,
                    min_score: float = 0.5) -> None:
    """Write a row of ``images`` with their ground-truth boxes (dashed) and each network's
    detections scoring at least ``min_score`` (solid, labelled with class and score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, image, target, i in zip(axes[0], images, targets, range(n), strict=True):
        ax.imshow(_show(image).numpy(), cmap="gray")
        ax.set_axis_off()
        boxes = [(target["boxes"], target["labels"], None, COLOURS[0], "--")]
        for j, dets in enumerate(detections.values()):
            keep = dets[i]["scores"] >= min_score
            boxes.append((dets[i]["boxes"][keep], dets[i]["labels"][keep],
                          dets[i]["scores"][keep], COLOURS[1 + j % (len(COLOURS) - 1)], "-"))
        for b, labels, scores, colour, style in boxes:
            for k in range(b.shape[0]):
                x1, y1, x2, y2 = (float(v) for v in b[k])
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2,
                                       ls=style, edgecolor=colour))
                text = str(int(labels[k])) if scores is None else \
                    f"{int(labels[k])} {float(scores[k]):.2f}"
                ax.text(x1, y1, text, color=colour, fontsize=6, va="bottom")
    handles = [Line2D([], [], color=COLOURS[0], ls="--", label="ground truth")]
    handles += [Line2D([], [], color=COLOURS[1 + j % (len(COLOURS) - 1)], label=name)
                for j, name in enumerate(detections)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)

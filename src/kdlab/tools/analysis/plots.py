"""The figures of ``kdlab analyze``: PNG files written atomically with matplotlib's Agg
backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.runtime.files import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _pyplot().close(fig)


def plot_anisotropy(result: Any, path: Path, title: str = "") -> None:
    """Left: histogram of the per-direction mean KL (FCFD Sec. 1's spread); right: top-1 with
    the features unmoved, moved along each image's least and most sensitive direction."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist(result.direction_kl, bins=min(40, max(5, result.directions // 8)),
              color="tab:blue", edgecolor="white")
    left.axvline(result.kl_mean, color="black", linestyle="--",
                 label=f"mean {result.kl_mean:.3g}")
    left.set(xlabel="KL(before || after), mean over images", ylabel="directions",
             title=f"stage {result.stage}, L2 distance {result.distance:.3g}, "
                   f"{result.directions} directions")
    left.legend(fontsize="small")
    names = ["unmoved", "least sensitive", "most sensitive"]
    values = [result.accuracy, result.accuracy_least, result.accuracy_most]
    bars = right.bar(names, values, color=["tab:gray", "tab:green", "tab:red"])
    right.bar_label(bars, fmt="%.2f")
    heading = "top-1 when every image moves"
    right.set(ylabel="top-1 (%)", title=f"{title}: {heading}" if title else heading,
              ylim=(0, max(values + [1.0]) * 1.15))
    _save(fig, path)


def plot_probe(positions: Sequence[int], rows: Sequence[tuple[str, dict[int, float | None]]],
               path: Path) -> None:
    """Grouped bars: one group per position, one bar per network (teacher first)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(positions) * len(rows) ** 0.5 + 3), 4))
    width = 0.8 / max(len(rows), 1)
    for j, (label, acc) in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(positions))]
        ys = [acc.get(k) or 0.0 for k in positions]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=["-" if acc.get(k) is None else f"{acc[k]:.1f}"
                                   for k in positions], fontsize="small")
    ax.set_xticks(range(len(positions)), [f"after stage {k}" for k in positions])
    ax.set(ylabel="exit-branch top-1 (%)", title="exit-branch probe (FCFD Sec. 3.4)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


#: FCFD App. B's colours: teacher light red, student light blue (translucent, so that
#: overlapping points darken)
SOURCE_COLOURS = {"teacher": "#e8554e", "student": "#3b8fd9"}


def plot_similarity(panels: Sequence[tuple[str, Any, Any, Any]], path: Path, *,
                    colour: str = "source", title: str = "") -> None:
    """One panel per student: its 2-D points and the teacher's beside them.

    ``panels``: ``(title, teacher_xy (n, 2), student_xy (n, 2), labels (n,))``. ``colour``:
    ``source`` (FCFD Fig. 4: teacher red, student blue, translucent) or ``class`` (tab10 by
    class; teacher dots, student crosses).
    """
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.6), squeeze=False)
    for ax, (name, t_xy, s_xy, labels) in zip(axes[0], panels, strict=True):
        if colour == "class":
            cmap = plt.get_cmap("tab10")
            ax.scatter(t_xy[:, 0], t_xy[:, 1], c=labels % 10, cmap=cmap, vmin=0, vmax=9, s=7,
                       marker="o", alpha=0.6, label="teacher", linewidths=0)
            ax.scatter(s_xy[:, 0], s_xy[:, 1], c=labels % 10, cmap=cmap, vmin=0, vmax=9, s=9,
                       marker="x", alpha=0.8, label="student", linewidths=0.8)
        else:
            for who, xy in (("teacher", t_xy), ("student", s_xy)):
                ax.scatter(xy[:, 0], xy[:, 1], s=7, color=SOURCE_COLOURS[who], alpha=0.45,
                           linewidths=0, label=f"from {who}")
        ax.set_title(name, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize="small", loc="upper right", markerscale=2)
    if title:
        fig.suptitle(title, fontsize="medium")
    _save(fig, path)

"""The compression report of ``kdlab profile``: Markdown table, CSV and the score-vs-latency plot.

One row per network (:func:`kdlab.tools.deploy.profile.measure`); each student is then compared
with the teacher it was distilled from (how many times fewer parameters and FLOP, how many
times faster, how many points of score it gives up). The plot shows each network's score
against its batch-1 latency, eager PyTorch and onnxruntime as two markers, with the Pareto
front (:func:`pareto_front`: the points no other point beats on both latency and score)
drawn through them, one panel per metric.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.runtime.files import atomic_write, atomic_write_text

COLUMNS = ("network", "role", "teacher", "model", "task", "metric", "score", "params",
           "gflop", "activation_mib", "size_mb", "onnx_mb", "batch", "threads", "eager_b1_ms",
           "eager_batch_ms", "eager_images_per_s", "ort_b1_ms", "ort_batch_ms",
           "ort_images_per_s", "onnx_check", "run")
LABELS = {"top1": "top-1", "miou": "mIoU", "map": "mAP"}
RUNTIMES = (("eager", "eager PyTorch", "o"), ("ort", "onnxruntime", "s"))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, score) that no other point dominates (as fast or
    faster and as good or better, one of them strictly), fastest first."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((xo <= x and yo >= y) and (xo < x or yo > y)
                        for j, (xo, yo) in enumerate(points) if j != i)
        if not dominated and not (math.isnan(x) or math.isnan(y)):
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _num(value: Any, spec: str) -> str:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return format(value, spec)
    return "-"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per network; the ONNX file's size is a column when a network has one."""
    onnx = any(isinstance(r.get("onnx_mb"), (int, float)) for r in rows)
    head = ["network", "role", "model", "params (M)", "GFLOP / image", "peak act. (MiB, b1)",
            "weights (MB)", *(["ONNX (MB)"] if onnx else []), "eager b1 (ms)",
            "eager (img/s)", "ORT b1 (ms)", "ORT (img/s)", "score"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        score = _num(r.get("score"), ".2f")
        cells = [r["network"], r["role"], r["model"], _num(r["params"] / 1e6, ".3f"),
                 _num(r.get("gflop"), ".4g"), _num(r.get("activation_mib"), ".2f"),
                 _num(r.get("size_mb"), ".2f"),
                 *([_num(r.get("onnx_mb"), ".2f")] if onnx else []),
                 _num(r.get("eager_b1_ms"), ".2f"),
                 _num(r.get("eager_images_per_s"), ".0f"), _num(r.get("ort_b1_ms"), ".2f"),
                 _num(r.get("ort_images_per_s"), ".0f"),
                 f"{score} {LABELS.get(r['metric'], r['metric'])}" if score != "-" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0:
        return a / b
    return None


def comparisons(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per student whose teacher is in ``rows``: the factors and the score given up."""
    by_label = {r["network"]: r for r in rows}
    lines = []
    for s in rows:
        t = by_label.get(s.get("teacher") or "")
        if t is None or s is t:
            continue
        parts = []
        for key, fewer, same in (("params", "fewer parameters", "as many parameters"),
                                 ("gflop", "fewer FLOP", "as many FLOP"),
                                 ("activation_mib", "less activation memory",
                                  "as much activation memory")):
            ratio = _ratio(t.get(key), s.get(key))
            if ratio is not None:
                parts.append(f"{ratio:.1f}x {fewer}" if ratio >= 1.05
                             else f"about {same} ({ratio:.2f}x)")
        for prefix, runtime in (("eager", "eager"), ("ort", "onnxruntime")):
            fast = _ratio(t.get(f"{prefix}_b1_ms"), s.get(f"{prefix}_b1_ms"))
            rate = _ratio(s.get(f"{prefix}_images_per_s"), t.get(f"{prefix}_images_per_s"))
            if fast is not None and rate is not None:
                parts.append(f"{fast:.1f}x faster at batch 1 and {rate:.1f}x the throughput "
                             f"({runtime})")
        if isinstance(s.get("score"), float) and isinstance(t.get("score"), float):
            label = LABELS.get(s["metric"], s["metric"])
            parts.append(f"{label} {s['score']:.2f} vs {t['score']:.2f} "
                         f"({s['score'] - t['score']:+.2f})")
        lines.append(f"- **{s['network']}** ({s['model']}) vs its teacher **{t['network']}** "
                     f"({t['model']}): " + ", ".join(parts) + ".")
    return lines


def markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any], plot: str | None) -> str:
    """The whole report: header (machine, threads, protocol), table, comparisons, plot."""
    lines = ["# kdlab profile: teachers and students as deployed", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", markdown_table(rows)]
    compared = comparisons(rows)
    if compared:
        lines += ["## Students vs their teachers", "", *compared, ""]
    if plot:
        lines += [f"![score vs latency]({plot})", ""]
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else
                             format(r[k], ".8g") if isinstance(r[k], float) else r[k])
                         for k in COLUMNS})
    return buf.getvalue()


def plot(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Score vs batch-1 latency with the Pareto front, one panel per metric; False (nothing
    written) when no row has both a score and a latency."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows
                                 if isinstance(r.get("score"), float)
                                 and isinstance(r.get("eager_b1_ms"), float)))
    if not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        points: list[tuple[float, float]] = []
        for prefix, runtime, marker in RUNTIMES:
            mine = [r for r in rows if r["metric"] == metric
                    and isinstance(r.get("score"), float)
                    and isinstance(r.get(f"{prefix}_b1_ms"), float)]
            if not mine:
                continue
            xs = [r[f"{prefix}_b1_ms"] for r in mine]
            ys = [r["score"] for r in mine]
            ax.scatter(xs, ys, marker=marker, s=50, label=runtime, zorder=3)
            for r, x, y in zip(mine, xs, ys):
                ax.annotate(r["network"], (x, y), textcoords="offset points", xytext=(5, 4),
                            fontsize="small")
            points += list(zip(xs, ys))
        front = [points[i] for i in pareto_front(points)]
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                    linewidth=1, zorder=2, label="Pareto front")
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=160,
                       facecolors="none", edgecolors="black", zorder=4)
        xs = [p[0] for p in points]
        if max(xs) > 10 * min(xs):
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize="x-small")
        label = LABELS.get(metric, metric)
        ax.set(xlabel="latency at batch 1 (ms, median)", ylabel=f"{label} (%)",
               title=f"{label} vs latency")
        ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def write_profile(out: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Write ``profile.md``, ``profile.csv`` and ``profile.png`` into ``out``; the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    shown = plot(rows, out / "profile.png")
    text = markdown(rows, meta, "profile.png" if shown else None)
    atomic_write_text(out / "profile.md", text)
    atomic_write_text(out / "profile.csv", to_csv(rows))
    return text

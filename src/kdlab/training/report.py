"""The end-of-run report: ``report.md`` (what ran, accuracy, time, losses) and
``curves.png`` (loss and accuracy curves), both from ``metrics.csv``, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.runtime.files import atomic_write, atomic_write_text
from kdlab.training.metrics_log import read_csv
from kdlab.training.prebuilt import is_memory

LOSS_PREFIX = "loss_"


#: how each task's primary metric and its companion are named in reports
LABELS = {"top1": "top-1", "top5": "top-5", "miou": "mIoU", "pixel_acc": "pixel acc.",
          "map": "mAP", "ap50": "AP50"}
#: the second number a report shows beside the primary metric
COMPANION = {"top1": "top5", "miou": "pixel_acc", "map": "ap50"}


def networks(rows: Sequence[dict[str, Any]], metric: str = "top1") -> list[str]:
    """Evaluated network names, from the ``val_<name>_<metric>`` columns (in order)."""
    names: list[str] = []
    suffix = f"_{metric}"
    for row in rows:
        for key in row:
            if key.startswith("val_") and key.endswith(suffix):
                name = key[len("val_"):-len(suffix)]
                if name not in names:
                    names.append(name)
    return names


def write_report(out_dir: str | Path, summary: dict[str, Any],
                 figures: Sequence[str] = ()) -> None:
    """Write ``report.md`` and ``curves.png`` in ``out_dir`` from its ``metrics.csv``;
    ``figures`` are pictures already in ``out_dir`` (e.g. predictions) that the report shows."""
    out = Path(out_dir)
    rows = read_csv(out / "metrics.csv")
    atomic_write_text(out / "report.md", markdown(rows, summary, figures))
    if rows:
        plot_curves(rows, out / "curves.png", summary.get("metric", "top1"))


def markdown(rows: Sequence[dict[str, Any]], summary: dict[str, Any],
             figures: Sequence[str] = ()) -> str:
    cfg = summary.get("config", {})
    model, data = cfg.get("model", {}), cfg.get("data", {})
    method = cfg.get("method", {}).get("name", "?")
    lines = [f"# kdlab run: {method}", ""]
    what = f"- method **{method}**, student **{model.get('student', '?')}**"
    if model.get("teacher"):
        source = (model.get("teacher_checkpoint")
                  or ("given in Python" if is_memory(model["teacher"])
                      else f"teacher_pretrained={model.get('teacher_pretrained')}"))
        what += f", teacher **{model['teacher']}** ({source})"
    lines += [what, f"- data **{data.get('name', '?')}**, batch {data.get('batch_size', '?')}",
              f"- epochs {summary.get('epochs', len(rows))}, device {summary.get('device', '?')}"
              f", {summary.get('world_size', 1)} process(es), amp "
              f"{cfg.get('train', {}).get('amp', 'none')}",
              *([f"- {summary['threads']}"] if summary.get("threads") else []),
              f"- time {summary.get('seconds', 0.0):.1f} s, "
              f"{summary.get('images_per_s', 0.0):.0f} train images/s", ""]
    metric = summary.get("metric", "top1")
    other = COMPANION.get(metric, metric)
    label, other_label = LABELS.get(metric, metric), LABELS.get(other, other)
    lines += ["## Validation (%)", "",
              f"| network | best {label} | last {label} | last {other_label} |",
              "|---|---|---|---|"]
    for name, m in summary.get("networks", {}).items():
        lines.append(f"| {name} | {_num(m.get(f'best_{metric}'))} | "
                     f"{_num(m.get(f'last_{metric}'))} | {_num(m.get(f'last_{other}'))} |")
    teacher = summary.get("teacher") or {}
    if teacher:  # evaluated once, before training (kdlab.training.teacher_check)
        lines.append(f"| teacher (frozen, before training) | {_num(teacher.get(metric))} | "
                     f"{_num(teacher.get(metric))} | {_num(teacher.get(other))} |")
    if summary.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    losses = [k for k in (rows[-1] if rows else {}) if k.startswith(LOSS_PREFIX)]
    if losses:
        lines += ["", "## Final epoch losses", "", "| loss | value |", "|---|---|"]
        lines += [f"| {k[len(LOSS_PREFIX):]} | {_num(rows[-1][k], '.4g')} |" for k in losses]
    lines += teacher_vs_student_lines(summary.get("teacher_vs_student") or [], label)
    for figure in figures:  # pictures are shown, other files (e.g. a CSV) linked
        shown = figure.lower().endswith((".png", ".jpg", ".svg"))
        lines += ["", f"![{figure}]({figure})" if shown else f"- [{figure}]({figure})"]
    lines += ["", "Per-epoch numbers: `metrics.csv`; curves: `curves.png`.", ""]
    return "\n".join(lines)


def teacher_vs_student_lines(rows: Sequence[dict[str, Any]], label: str) -> list[str]:
    """The report's teacher-vs-student section (rows of
    :func:`kdlab.training.model_cost.teacher_vs_student`, the teacher first)."""
    if not rows:
        return []
    lines = ["", "## Teacher vs student (the deployed networks)", "",
             f"| network | model | parameters | GFLOP / image | size (MB) | best {label} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['model']} | {r['params'] / 1e6:.3f} M | "
                     f"{_num(r['gflop'], '.4g')} | {r['size_bytes'] / 1e6:.2f} | "
                     f"{_num(r['score'])} |")
    teacher = rows[0] if rows[0]["name"] == "teacher" else None
    lines.append("")
    for r in rows[1:] if teacher else []:
        parts = [f"{teacher['params'] / max(r['params'], 1):.1f}x fewer parameters"]
        if teacher["gflop"] and r["gflop"]:
            parts.append(f"{teacher['gflop'] / r['gflop']:.1f}x fewer FLOP per image")
        parts.append(f"a {teacher['size_bytes'] / max(r['size_bytes'], 1):.1f}x smaller file")
        if isinstance(teacher["score"], (int, float)) and isinstance(r["score"], (int, float)):
            parts.append(f"{r['score'] - teacher['score']:+.2f} {label} points")
        lines.append(f"- {r['name']} vs teacher: " + ", ".join(parts) + ".")
    lines += ["", "FLOP: one image through the deployed graph (convolutions and matrix products, "
              "2 per multiply-add); size: its safetensors file; the teacher's score is its own "
              "run's (metrics.csv beside its checkpoint). Not timed here: `kdlab profile RUN` "
              "measures latency and memory."]
    return lines


def _num(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, metric: str = "top1") -> None:
    """Two panels: training losses by name; the training score and each network's validation
    ``metric`` (top-1, mIoU, mAP) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in _keys(rows) if k.startswith(LOSS_PREFIX)]
    for key in keys:
        xs, ys = series(rows, key)
        ax_loss.plot(xs, ys, marker=".", label=key[len(LOSS_PREFIX):])
    xs, ys = series(rows, "loss")
    if xs:
        ax_loss.plot(xs, ys, color="black", linewidth=2, label="total")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="losses")
    ax_loss.legend(fontsize="small")
    train = [k for k in _keys(rows) if k.startswith("train_")]
    for key in train:
        xs, ys = series(rows, key)
        ax_acc.plot(xs, ys, linestyle="--", label=f"train {LABELS.get(key[6:], key[6:])}")
    for name in networks(rows, metric):
        xs, ys = series(rows, f"val_{name}_{metric}")
        ax_acc.plot(xs, ys, marker="o", label=f"val {name}")
    xs, ys = series(rows, f"teacher_{metric}")  # the frozen teacher, evaluated once
    if xs:
        ax_acc.plot(xs, ys, linestyle=":", color="grey", label="teacher (before training)")
    label = LABELS.get(metric, metric)
    ax_acc.set(xlabel="epoch", ylabel=f"{label} (%)", title=label)
    ax_acc.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of column ``key`` over the rows that hold a number there."""
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows
             if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def print_summary(summary: dict[str, Any]) -> None:
    """The one ``done:`` line of a finished run (``kdlab train`` / ``distill``,
    ``kdlab.distill``)."""

    def fmt(key: str, spec: str) -> str:
        value = summary.get(key)
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    metric = str(summary.get("metric", "top1"))
    label = LABELS.get(metric, metric)
    print(
        f"done: best {label} {fmt(f'best_{metric}', '.2f')}  last {label} "
        f"{fmt(f'last_{metric}', '.2f')}  "
        f"epochs {summary.get('epochs', '-')}  time {fmt('seconds', '.1f')} s  "
        f"{fmt('images_per_s', '.0f')} images/s  -> {summary.get('out_dir', '')}"
    )

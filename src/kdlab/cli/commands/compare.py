"""``kdlab compare RUN ...``: finished (or running) runs side by side.

One row per run folder, read from its ``config.yaml`` and ``metrics.csv``: method, student,
teacher, task, the primary metric (``top1`` for classification, ``miou`` for segmentation,
``map`` for detection) of the first evaluated network, best and last, epochs, the mean
training step time and images per second, and the wall time. Printed as Markdown; with
``--out DIR`` also written as ``compare.md``, ``compare.csv`` and ``compare.png`` (the
validation curves of every run, one panel per metric).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write, atomic_write_text
from kdlab.training.metrics_log import read_csv
from kdlab.training.report import LABELS, networks, series

#: the primary validation metric of each task (``val_<network>_<metric>`` in metrics.csv)
PRIMARY = {"classification": "top1", "segmentation": "miou", "detection": "map"}
COLUMNS = ("run", "method", "student", "teacher", "task", "metric", "network", "best", "last",
           "epochs", "step_ms", "images_per_s", "wall_s")


def add_parser(sub: Any) -> None:
    text = "compare runs side by side: table (Markdown, CSV) and validation curves (PNG)"
    p = sub.add_parser("compare", help=text, description=text)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (kdlab train / distill)")
    p.add_argument("--out", metavar="DIR",
                   help="also write compare.md, compare.csv and compare.png into DIR")
    p.set_defaults(run=run)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{str(path)!r} is not valid YAML ({e}); fix or delete it.") from None
    return tree if isinstance(tree, dict) else {}


def run_rows(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run's table row, its metrics.csv rows)."""
    folder = Path(folder)
    metrics = folder / "metrics.csv"
    if not metrics.is_file():
        raise UserError(f"{str(folder)!r} is not a kdlab run folder (it has no metrics.csv); "
                        "give folders written by `kdlab train` or `kdlab distill`.")
    cfg = _read_config(folder)
    rows = read_csv(metrics)
    task = str(cfg.get("task") or "classification")
    metric = PRIMARY.get(task, "top1")
    model, method = cfg.get("model") or {}, cfg.get("method") or {}
    nets = networks(rows, metric)
    net = "student" if "student" in nets else (nets[0] if nets else "student")
    values = [float(r[f"val_{net}_{metric}"]) for r in rows
              if isinstance(r.get(f"val_{net}_{metric}"), float)]
    rates = [float(r["images_per_s"]) for r in rows if isinstance(r.get("images_per_s"), float)]
    rate = sum(rates) / len(rates) if rates else math.nan
    batch = (cfg.get("data") or {}).get("batch_size")
    return {
        "run": folder.name or str(folder),
        "method": str(method.get("name", "?")) if isinstance(method, dict) else str(method),
        "student": str(model.get("student") or "?"),
        "teacher": str(model.get("teacher") or "-"),
        "task": task,
        "metric": metric,
        "network": net,
        "best": max(values) if values else math.nan,
        "last": values[-1] if values else math.nan,
        "epochs": len(rows),
        "step_ms": 1000.0 * batch / rate if batch and rate and rate == rate else math.nan,
        "images_per_s": rate,
        "wall_s": sum(float(r.get("epoch_seconds", 0.0)) for r in rows),
    }, rows


def _cell(value: Any, spec: str) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else format(value, spec)
    return str(value)


SPECS = {"best": ".2f", "last": ".2f", "step_ms": ".1f", "images_per_s": ".0f", "wall_s": ".1f"}


def markdown(table: list[dict[str, Any]]) -> str:
    head = ["run", "method", "student", "teacher", "task", "best", "last", "epochs",
            "step (ms)", "images/s", "wall (s)"]
    keys = ["run", "method", "student", "teacher", "task", "best", "last", "epochs", "step_ms",
            "images_per_s", "wall_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [_cell(row[k], SPECS.get(k, "")) for k in keys]
        label = LABELS.get(row["metric"], row["metric"])
        cells[5], cells[6] = f"{cells[5]} {label}", f"{cells[6]} {label}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: _cell(row[k], ".6g") for k in COLUMNS})
    return buf.getvalue()


def plot(table: list[dict[str, Any]], histories: list[list[dict[str, Any]]], path: Path) -> None:
    """Validation curves, one panel per metric, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(row["metric"] for row in table))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for row, rows in zip(table, histories):
            if row["metric"] != metric:
                continue
            key = f"val_{row['network']}_{metric}"
            ax.plot(*series(rows, key), marker="o", label=f"{row['run']} ({row['method']})")
        label = LABELS.get(metric, metric)
        ax.set(xlabel="epoch", ylabel=f"validation {label} (%)", title=label)
        ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def compare(runs: list[str], out: str | Path | None = None) -> str:
    """The Markdown table of ``runs``; with ``out`` also compare.md / .csv / .png there."""
    read = [run_rows(r) for r in runs]
    table, histories = [t for t, _ in read], [h for _, h in read]
    names = [row["run"] for row in table]
    for row, folder in zip(table, runs):
        if names.count(row["run"]) > 1:
            row["run"] = str(folder)
    text = markdown(table)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "compare.md", text)
        atomic_write_text(folder / "compare.csv", to_csv(table))
        plot(table, histories, folder / "compare.png")
    return text


def run(args: argparse.Namespace) -> int:
    print(compare(args.runs, args.out), end="")
    if args.out:
        print(f"-> {args.out}/compare.md, compare.csv, compare.png")
    return 0

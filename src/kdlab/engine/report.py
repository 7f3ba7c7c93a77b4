"""The end-of-run report: ``report.md`` (what ran, accuracy, time, losses) and
``curves.png`` (loss and accuracy curves), both from ``metrics.csv``, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.engine.io import atomic_write, atomic_write_text
from kdlab.engine.metrics_log import read_csv

LOSS_PREFIX = "loss_"


def networks(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Evaluated network names, from the ``val_<name>_top1`` columns (in order)."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("val_") and key.endswith("_top1"):
                name = key[len("val_"):-len("_top1")]
                if name not in names:
                    names.append(name)
    return names


def write_report(out_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write ``report.md`` and ``curves.png`` in ``out_dir`` from its ``metrics.csv``."""
    out = Path(out_dir)
    rows = read_csv(out / "metrics.csv")
    atomic_write_text(out / "report.md", markdown(rows, summary))
    if rows:
        plot_curves(rows, out / "curves.png")


def markdown(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    cfg = summary.get("config", {})
    model, data = cfg.get("model", {}), cfg.get("data", {})
    method = cfg.get("method", {}).get("name", "?")
    lines = [f"# kdlab run: {method}", ""]
    what = f"- method **{method}**, student **{model.get('student', '?')}**"
    if model.get("teacher"):
        source = (model.get("teacher_checkpoint")
                  or f"teacher_pretrained={model.get('teacher_pretrained')}")
        what += f", teacher **{model['teacher']}** ({source})"
    lines += [what, f"- data **{data.get('name', '?')}**, batch {data.get('batch_size', '?')}",
              f"- epochs {summary.get('epochs', len(rows))}, device {summary.get('device', '?')}"
              f", {summary.get('world_size', 1)} process(es), amp "
              f"{cfg.get('train', {}).get('amp', 'none')}",
              f"- time {summary.get('seconds', 0.0):.1f} s, "
              f"{summary.get('images_per_s', 0.0):.0f} train images/s", ""]
    lines += ["## Accuracy (validation, %)", "",
              "| network | best top-1 | last top-1 | last top-5 |", "|---|---|---|---|"]
    for name, m in summary.get("networks", {}).items():
        lines.append(f"| {name} | {_num(m.get('best_top1'))} | {_num(m.get('last_top1'))} | "
                     f"{_num(m.get('last_top5'))} |")
    losses = [k for k in (rows[-1] if rows else {}) if k.startswith(LOSS_PREFIX)]
    if losses:
        lines += ["", "## Final epoch losses", "", "| loss | value |", "|---|---|"]
        lines += [f"| {k[len(LOSS_PREFIX):]} | {_num(rows[-1][k], '.4g')} |" for k in losses]
    lines += ["", "Per-epoch numbers: `metrics.csv`; curves: `curves.png`.", ""]
    return "\n".join(lines)


def _num(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels: training losses by name; train and validation top-1 per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in _keys(rows) if k.startswith(LOSS_PREFIX)]
    for key in keys:
        xs, ys = _series(rows, key)
        ax_loss.plot(xs, ys, marker=".", label=key[len(LOSS_PREFIX):])
    xs, ys = _series(rows, "loss")
    if xs:
        ax_loss.plot(xs, ys, color="black", linewidth=2, label="total")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="losses")
    ax_loss.legend(fontsize="small")
    xs, ys = _series(rows, "train_top1")
    if xs:
        ax_acc.plot(xs, ys, linestyle="--", label="train (student)")
    for name in networks(rows):
        xs, ys = _series(rows, f"val_{name}_top1")
        ax_acc.plot(xs, ys, marker="o", label=f"val {name}")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    ax_acc.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows
             if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]

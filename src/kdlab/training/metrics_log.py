"""Per-epoch metrics: ``metrics.csv``, TensorBoard events, the experiment trackers
(:mod:`kdlab.training.trackers`) and progress output (rank 0).

``metrics.csv`` holds one row per finished epoch. It is rewritten atomically from the run's
history after each epoch (the history also lives in every checkpoint), so a crash never
leaves a torn file, a resumed run keeps the rows up to its checkpoint and drops later ones,
and a loss term that first appears in a later epoch just adds a column.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kdlab.runtime.files import atomic_write_text
from kdlab.training.trackers import Trackers

FIRST_COLUMNS = ("epoch", "lr")


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Column order: epoch, lr, then keys in order of first appearance."""
    cols = list(FIRST_COLUMNS)
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_csv(path: Path) -> list[dict[str, float | str]]:
    """Rows of a metrics.csv, numbers as floats (empty cells left out)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float | str] = {}
            for k, v in raw.items():
                if v is None or v == "":
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows


def _tensorboard_writer(folder: Path) -> Any:
    """A TensorBoard SummaryWriter, or None (with a note) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, so no TensorBoard events are written "
              "(`pip install tensorboard` to get them).", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(folder))


class MetricsLog:
    """metrics.csv, TensorBoard (with ``tensorboard``, when installed) and the ``trackers``'
    runs; a no-op off rank 0."""

    def __init__(self, out_dir: Path, *, enabled: bool, history: Sequence[dict[str, Any]] = (),
                 tensorboard: bool = True, trackers: Trackers | None = None):
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = [dict(r) for r in history]
        self.writer = None
        self.trackers = trackers if trackers is not None else Trackers()
        if not enabled:
            return
        if tensorboard:
            self.writer = _tensorboard_writer(Path(out_dir) / "tensorboard")
        if self.rows or self.path.exists():
            write_csv(self.path, self.rows)

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        if not self.enabled:
            return
        write_csv(self.path, self.rows)
        if self.writer is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        self.trackers.log(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """A tqdm bar on a terminal, plain text lines otherwise, or nothing.

    ``mode`` is train.progress: auto | bar | lines | none.
    """

    def __init__(self, mode: str, *, enabled: bool, every: int = 50) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        if mode == "bar":
            try:
                import tqdm  # noqa: F401
            except ImportError:
                mode = "lines"
        self.mode = mode if enabled else "none"
        self.every = every

    def steps(self, it: Iterable[Any], total: int, epoch: int, epochs: int) -> Iterator[Any]:
        """Iterate ``it``, showing progress; ``self.postfix`` is shown when set."""
        self.postfix: dict[str, float] = {}
        if self.mode == "bar":
            from tqdm import tqdm

            bar = tqdm(it, total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       dynamic_ncols=True)
            self._bar = bar
            yield from bar
            bar.close()
            return
        self._bar = None
        start = time.perf_counter()
        for i, item in enumerate(it):
            yield item
            if self.mode == "lines" and (i + 1) % self.every == 0 and i + 1 < total:
                rate = (i + 1) / max(time.perf_counter() - start, 1e-9)
                print(f"epoch {epoch + 1}/{epochs} step {i + 1}/{total} ({rate:.1f} it/s) "
                      + _pairs(self.postfix), flush=True)

    def note(self, text: str) -> None:
        """A one-line message (e.g. a change of CPU threads) that does not break the bar."""
        if self.mode == "none":
            return
        if getattr(self, "_bar", None) is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def update(self, values: dict[str, float]) -> None:
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def epoch_line(self, row: dict[str, Any]) -> None:
        if self.mode == "none":
            return
        rest = {k: v for k, v in row.items() if k != "epoch"}
        print(f"epoch {row['epoch']}: " + _pairs(rest), flush=True)


def _pairs(values: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items())

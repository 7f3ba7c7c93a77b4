"""Experiment trackers: MLflow and Weights & Biases as optional loggers of a run.

``train.loggers`` names where a run's numbers go: ``metrics.csv`` is always written (the
report, ``kdlab compare`` and ``--resume`` read it; ``csv`` may be listed for clarity),
``tensorboard`` writes TensorBoard events (:mod:`kdlab.training.metrics_log`), ``mlflow`` and
``wandb`` open one tracker run per kdlab run (:mod:`.mlflow_run`, :mod:`.wandb_run`). A
tracker run gets the resolved config when the run starts, every per-epoch row of
``metrics.csv`` as it is written (step = epoch), and at the end the report (``report.md``,
``curves.png``, the report's pictures, ``config.yaml``, ``metrics.csv``) and the exported
networks of ``best.pt`` as safetensors files, the ones ``kdlab export RUN`` writes (they are
written into the run folder too). Only rank 0 of a torchrun job logs.

The tracker run's id is kept in ``RUN/trackers.json``, so that ``--resume`` continues the
same tracker run. A run that stops with an error ends its tracker runs as failed (Ctrl-C and
``kdlab tune``'s pruning as killed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from kdlab.core.registry import did_you_mean
from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write_text

#: every name train.loggers accepts
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
#: logger -> (the module it needs, the kdlab extra that installs it)
NEEDS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
IDS_FILE = "trackers.json"


def check_loggers(names: Sequence[str]) -> None:
    """``train.loggers`` names known loggers, each once, whose packages are installed."""
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"train.loggers names {name!r}, which is not a logger."
                            f"{did_you_mean(name, list(LOGGERS))} Known: {', '.join(LOGGERS)}.")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise UserError(f"train.loggers lists {', '.join(twice)} more than once; list each "
                        "logger once.")
    for name in names:
        if name in NEEDS:
            module, extra = NEEDS[name]
            if importlib.util.find_spec(module) is None:
                raise UserError(f"train.loggers names {name}, but {module} is not installed: "
                                f"pip install 'kdlab[{extra}]' (or remove {name}).")


class Tracker(Protocol):
    """One tracker run (MLflow, W&B) that follows one kdlab run."""

    def start(self, cfg: Any, out_dir: Path, previous: dict[str, Any] | None
              ) -> dict[str, Any]:
        """Open the tracker run (continue ``previous``, what an earlier start returned, when
        it still exists) and log the config; returns what identifies the run."""

    def log(self, numbers: dict[str, float], step: int) -> None:
        """One epoch's numbers."""

    def log_files(self, files: Sequence[Path], folder: str) -> None:
        """Files under ``folder`` of the tracker run's artifacts."""

    def end(self, status: str, summary: dict[str, float]) -> None:
        """Close the run: ``FINISHED``, ``FAILED`` or ``KILLED``; ``summary``: final numbers."""


def _tracker(name: str) -> Tracker:
    if name == "mlflow":
        from kdlab.training.trackers.mlflow_run import MLflowTracker

        return MLflowTracker()
    from kdlab.training.trackers.wandb_run import WandbTracker

    return WandbTracker()


def end_status(error: BaseException) -> str:
    """How a run that stopped with ``error`` ends in a tracker: ``KILLED`` for Ctrl-C and for
    an error that says so (``run_status``: kdlab tune's pruning), else ``FAILED``."""
    if isinstance(error, KeyboardInterrupt):
        return "KILLED"
    return str(getattr(error, "run_status", "FAILED"))


class Trackers:
    """The tracker runs of one kdlab run (none off rank 0 or when no tracker is listed)."""

    def __init__(self, trackers: dict[str, Tracker] | None = None) -> None:
        self.trackers = trackers or {}
        self.ended = False

    @classmethod
    def open(cls, cfg: Any, out_dir: Path, *, enabled: bool) -> Trackers:
        """Start (or, with ``RUN/trackers.json``, continue) a run in each tracker that
        ``cfg.train.loggers`` lists."""
        names = [n for n in cfg.train.loggers if n in NEEDS]
        if not enabled or not names:
            return cls()
        path = Path(out_dir) / IDS_FILE
        ids: dict[str, Any] = {}
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                ids = dict(json.loads(path.read_text()))
        opened = cls()
        try:
            for name in names:
                tracker = _tracker(name)
                ids[name] = tracker.start(cfg, Path(out_dir), ids.get(name))
                opened.trackers[name] = tracker
        except BaseException as e:
            opened.end(end_status(e))
            raise
        atomic_write_text(path, json.dumps(ids, indent=2) + "\n")
        return opened

    def log(self, row: dict[str, Any]) -> None:
        """One metrics.csv row: every number but the epoch, at step = epoch."""
        if not self.trackers:
            return
        numbers = {k: float(v) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers.values():
            tracker.log(numbers, int(row["epoch"]))

    def finish(self, report: Sequence[Path], exported: Sequence[Path],
               summary: dict[str, Any]) -> None:
        """Log the report files and the exported networks, then close each run."""
        final = {k: float(v) for k, v in summary.items()
                 if k.startswith("best_") and isinstance(v, (int, float))}
        for tracker in self.trackers.values():
            tracker.log_files([p for p in report if p.is_file()], "report")
            tracker.log_files(exported, "exported")
            tracker.end("FINISHED", final)
        self.ended = True

    def end(self, status: str) -> None:
        """Close each run that is still open (a failed or interrupted kdlab run); an error
        while closing does not hide the error that stopped the run."""
        if self.ended:
            return
        self.ended = True
        for tracker in self.trackers.values():
            with contextlib.suppress(Exception):
                tracker.end(status, {})

"""A kdlab run as an MLflow run (``train.loggers: [..., mlflow]``; ``pip install 'kdlab[mlflow]'``).

Written through ``mlflow.tracking.MlflowClient`` (no global active run, so that several kdlab
runs in one process, e.g. the trials of ``kdlab tune``, never mix). The tracking store is
``train.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default (``./mlflow.db``,
SQLite): offline, no server. An experiment kdlab creates in a SQLite store keeps its
artifacts in ``mlruns/EXPERIMENT/`` beside the database file. A local file store (a folder path or
``file:`` URI) is accepted too; MLflow keeps it in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is set, which kdlab then sets for this process.

The run is named after the run folder, tagged with the folder, method and networks; its
params are the resolved config as dotted keys (``method.temperature``), its metrics every
``metrics.csv`` column at step = epoch, its artifacts ``config.yaml`` (at the start),
``report/`` and ``exported/`` (at the end).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.errors import UserError


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": "value"}`` (MLflow params are strings)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: str(tree)}


def resolve_uri(setting: str | None) -> str:
    """The tracking URI to use; a local SQLite file's folder is created, a local file store is
    allowed."""
    import mlflow

    uri = setting or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def artifact_root(uri: str) -> Path | None:
    """Where the artifacts of an experiment kdlab creates in a SQLite store go: ``mlruns/``
    beside the database file (MLflow's own default is ``./mlruns`` of whatever folder the
    run starts in, which scatters artifacts); None for other stores (their own default)."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve().parent / "mlruns"


def _quiet_migrations() -> None:
    """MLflow's first use of a SQLite store runs its schema migrations, which log a line per
    step at INFO through alembic; keep kdlab's output readable."""
    for name in ("alembic", "mlflow.store.db.utils"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class MLflowTracker:
    """One MLflow run per kdlab run (see the module docstring)."""

    def start(self, cfg: Any, out_dir: Path, previous: dict[str, Any] | None
              ) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        _quiet_migrations()
        uri = resolve_uri(cfg.train.mlflow_uri)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._previous_run(previous, uri)
            if self.run_id is None:
                experiment = self._experiment(cfg.train.experiment, artifact_root(uri))
                run = self.client.create_run(experiment, run_name=out_dir.name, tags={
                    "kdlab.out_dir": str(out_dir.resolve()), "kdlab.method": cfg.method_name,
                    "kdlab.student": cfg.model.student, "kdlab.teacher": cfg.model.teacher or ""})
                self.run_id = run.info.run_id
                params = [Param(k, v) for k, v in flatten(cfg.to_dict()).items()]
                self.client.log_batch(self.run_id, params=params)
            else:
                self.client.update_run(self.run_id, status="RUNNING")
            if (out_dir / "config.yaml").is_file():
                self.client.log_artifact(self.run_id, str(out_dir / "config.yaml"))
        except MlflowException as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"MLflow cannot log to {uri!r} ({first}); check train.mlflow_uri "
                            "or $MLFLOW_TRACKING_URI.") from None
        return {"uri": uri, "run_id": self.run_id}

    def _previous_run(self, previous: dict[str, Any] | None, uri: str) -> str | None:
        """The run an earlier start of this kdlab run opened, if it is in this store."""
        from mlflow.exceptions import MlflowException

        if not previous or previous.get("uri") != uri or not previous.get("run_id"):
            return None
        try:
            return self.client.get_run(str(previous["run_id"])).info.run_id
        except MlflowException:
            return None

    def _experiment(self, name: str, root: Path | None) -> str:
        """The id of experiment ``name``, created if needed (another process may create it at
        the same moment), its artifacts under ``root`` when given."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            location = (root / name).as_uri() if root is not None else None
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in numbers.items()])

    def log_files(self, files: Sequence[Path], folder: str) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def end(self, status: str, summary: dict[str, float]) -> None:
        if summary:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0)
                                                        for k, v in summary.items()])
        self.client.set_terminated(self.run_id, status=status)

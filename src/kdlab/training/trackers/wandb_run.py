"""A kdlab run as a Weights & Biases run (``train.loggers: [..., wandb]``; ``pip install
'kdlab[wandb]'``).

Offline by default: the run is written to ``RUN/wandb/offline-run-<time>-<id>/`` and nothing
is sent; ``wandb sync RUN/wandb/offline-run-*`` uploads it later. ``WANDB_MODE=online`` (with
a W&B login) logs live instead. The project is ``train.experiment``, the run name the run
folder's name, the config the resolved config; every ``metrics.csv`` column is logged at
step = epoch, the best scores go to the run summary, and the report files and exported
networks are copied into the run's files (``files/report/``, ``files/exported/``), which W&B
uploads with the run. W&B's capture of the console and its system-metrics sampler are off:
kdlab prints its own lines, and a sampler thread would take CPU from training.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class WandbTracker:
    """One W&B run per kdlab run (see the module docstring)."""

    def start(self, cfg: Any, out_dir: Path, previous: dict[str, Any] | None
              ) -> dict[str, Any]:
        import wandb

        run_id = str(previous["id"]) if previous and previous.get("id") else None
        self.run = wandb.init(
            project=cfg.train.experiment, name=out_dir.name, dir=str(out_dir),
            mode=os.environ.get("WANDB_MODE", "offline"), id=run_id, resume="allow",
            config=cfg.to_dict(), reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False,
                                    x_save_requirements=False))
        return {"id": self.run.id, "dir": str(Path(self.run.dir).parent)}

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def log_files(self, files: Sequence[Path], folder: str) -> None:
        target = Path(self.run.dir) / folder
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, target / path.name)

    def end(self, status: str, summary: dict[str, float]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

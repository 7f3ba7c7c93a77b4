"""One trial of ``kdlab tune``: an ordinary kdlab run folder trained by the one Trainer.

Each trial draws its values (:func:`kdlab.tools.tune.space.sample`), writes a run into
``OUT/trials/NNNN`` (NNNN = the trial's number in the study) and reports the validation score
of every epoch to Optuna (the first evaluated network's primary metric: top-1, mIoU, mAP), so
that the pruner can stop a poor trial after any epoch but the last; a pruned trial keeps its
folder and its checkpoints. The trial's value is the run's best score (``best_top1``).

A trial whose process died (kill -9, a crash, Ctrl-C) is run again with the same values as a
new trial (:func:`rerun`). The rerun takes over the dead trial's run folder (renamed to its own
number) and resumes it from its last epoch checkpoint, reporting the epochs done before to
Optuna again; the result is the result the trial would have had uninterrupted.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.errors import UserError
from kdlab.tools.tune.space import Dimension, assign, sample


class Pruned(optuna.TrialPruned):
    """Optuna's pruning signal; a tracker run of the trial ends as killed, not failed."""

    run_status = "KILLED"


def rerun(study: optuna.Study, dead: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's values again as a new trial that continues its run folder."""
    study.enqueue_trial(dict(dead.params), user_attrs={"rerun_of": dead.number})


def trial_config(tree: dict[str, Any], values: dict[str, Any], out_dir: Path) -> RunConfig:
    """The run config of a trial: the study's base config with ``values``, in ``out_dir``."""
    tree = assign(tree, values)
    tree.setdefault("train", {})["out_dir"] = str(out_dir)
    return build_dataclass(RunConfig, tree, where="config")


def score_key(row: dict[str, Any], metric: str) -> str | None:
    """The first evaluated network's ``val_<network>_<metric>`` column of a metrics row."""
    return next((k for k in row if k.startswith("val_") and k.endswith(f"_{metric}")), None)


class TrialRunner:
    """The objective Optuna calls: one trial, one run folder (see the module docstring)."""

    def __init__(self, tree: dict[str, Any], space: Sequence[Dimension], out: Path,
                 metric: str, epochs: int, worker_lock: Path,
                 announce: Callable[[optuna.Trial, dict[str, Any], str], None]) -> None:
        self.tree, self.space, self.out = tree, space, out
        self.metric, self.epochs = metric, epochs
        self.worker_lock, self.announce = worker_lock, announce
        self.current: int | None = None  # the number of the trial being run

    def __call__(self, trial: optuna.Trial) -> float:
        from kdlab.training.trainer import Trainer

        self.current = trial.number
        values = sample(trial, self.space)
        folder, continued = self._folder(trial)
        for key, value in (("run_dir", str(folder.resolve())), ("host", socket.gethostname()),
                           ("worker_lock", str(self.worker_lock))):
            trial.set_user_attr(key, value)
        cfg = trial_config(self.tree, values, folder)
        self.announce(trial, values, continued)
        resume = bool(continued)
        if resume and (folder / "last.pt").is_file():
            self._replay(trial, folder)
        try:
            summary = Trainer(cfg, resume=resume,
                              on_epoch=lambda row: self._report(trial, row)).fit()
        except UserError as e:
            trial.set_user_attr("error", " ".join(str(e).split()))
            raise
        return float(summary[f"best_{self.metric}"])

    def _folder(self, trial: optuna.Trial) -> tuple[Path, str]:
        """The trial's run folder, and how it came to be: "" (new) or "continues trial N"
        when the trial reruns a dead one whose folder it took over."""
        folder = self.out / "trials" / f"{trial.number:04d}"
        previous = trial.user_attrs.get("rerun_of")
        if previous is None:
            return folder, ""
        dead = next((t for t in trial.study.get_trials(deepcopy=False)
                     if t.number == previous), None)
        old = Path(dead.user_attrs.get("run_dir", "")) if dead is not None else None
        if old is None or not old.is_dir() or old == folder or folder.exists():
            return folder, ""  # e.g. the dead trial ran on another machine
        if not (old / "config.yaml").is_file():  # died before its run wrote anything
            shutil.rmtree(old, ignore_errors=True)
            return folder, ""
        os.replace(old, folder)
        return folder, f"continues trial {previous}"

    def _replay(self, trial: optuna.Trial, folder: Path) -> None:
        """Report the epochs a continued run did before it died, then let the pruner judge."""
        from kdlab.training.checkpoint import load_checkpoint

        for row in load_checkpoint(folder / "last.pt").get("history", []):
            self._report(trial, row)

    def _report(self, trial: optuna.Trial, row: dict[str, Any]) -> None:
        key = score_key(row, self.metric)
        if key is None:  # an epoch without evaluation (train.eval_every)
            return
        epoch = int(row["epoch"])
        trial.report(float(row[key]), epoch)
        if epoch < self.epochs and trial.should_prune():
            raise Pruned(f"pruned after epoch {epoch}")


# --------------------------------------------------------------------- checks before a search
def check_trial_config(cfg: RunConfig) -> None:
    """What ``kdlab train`` / ``distill`` check before a run folder exists: every setting,
    name and range, the networks and the teacher's weights."""
    from kdlab.training.build import check_model_config
    from kdlab.training.validate import validate_config

    validate_config(cfg)
    check_model_config(cfg)


def check_space(space: Sequence[Dimension], base: RunConfig) -> None:
    """Both ends of every range and every choice, under each method they apply to, make a
    config that :func:`check_trial_config` accepts; else a UserError naming the --space."""
    from kdlab.tools.tune.space import probes

    tree = base.to_dict()
    for dim, values in probes(space, base):
        try:
            check_trial_config(trial_config(tree, values, Path(base.train.out_dir)))
        except UserError as e:
            raise UserError(f"--space {dim.text!r}: {' '.join(str(e).split())}") from None

"""What ``kdlab tune`` hands back, in its folder: ``best.yaml`` (the best trial as a recipe
that ``kdlab distill`` / ``kdlab train`` runs), ``trials.md`` and ``trials.csv`` (every trial
of the study: state, score, epochs, values, time, run folder) and Optuna's standard plots,
drawn with its matplotlib backend: ``history.png`` (optimisation history), ``importance.png``
(parameter importances by PED-ANOVA, Optuna's default evaluator, which needs no
scikit-learn and weighs conditional parameters too), ``parallel.png`` (parallel coordinates)
and ``intermediate.png`` (every trial's score per epoch: where the pruned ones stopped).

All of it is written from the study's database, so any process of the study can write it,
and running the tune command again once the study is complete rewrites it. The processes of
one study take turns (:func:`results_lock`), each reading the database inside its turn, so the
last files written always come from the last state: a process that finishes while another's
last trial still runs cannot overwrite the other's final table with its older view.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from kdlab.core.config import apply_overrides, read_yaml
from kdlab.runtime.files import atomic_write, atomic_write_text
from kdlab.tools.tune.settings import TuneSettings, redacted
from kdlab.tools.tune.space import Dimension, assign
from kdlab.training.report import LABELS

PLOTS = {
    "history.png": "plot_optimization_history",
    "importance.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
    "intermediate.png": "plot_intermediate_values",
}


@contextlib.contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Wait for, then hold, ``OUT/.results.lock`` (``fcntl.flock``; without it, on systems
    that have none, the processes' writes are only atomic, not ordered)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(out / ".results.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def write_results(study: optuna.Study, out: Path, space: Sequence[Dimension], s: TuneSettings,
                  metric: str, url: str, say: Callable[[str], None]) -> None:
    """The files of the module doc, from the study's state read in this process's turn."""
    with results_lock(out):
        _write_results(study, out, space, s, metric, url, say)


def _write_results(study: optuna.Study, out: Path, space: Sequence[Dimension], s: TuneSettings,
                   metric: str, url: str, say: Callable[[str], None]) -> None:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    label = f"best {LABELS.get(metric, metric)}"
    rows = trial_rows(trials, space, out, label)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    recipe = (write_best_recipe(best, out, s, metric, study.study_name) if best is not None
              else None)
    plots, notes = write_plots(study, out, label)
    write_csv(out / "trials.csv", rows)
    atomic_write_text(out / "trials.md", markdown(study, trials, rows, best, s, space, plots,
                                                  notes, label, url))
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    say(f"{len(trials)} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        + f"; table {out / 'trials.md'}")
    if best is not None:
        say(f"best: trial {best.number}, {label} {best.value:.2f} -> {recipe}")
    for note in notes:
        say(note)


# --------------------------------------------------------------------- the table
def trial_rows(trials: Sequence[optuna.trial.FrozenTrial], space: Sequence[Dimension],
               out: Path, label: str) -> list[dict[str, Any]]:
    rerun_by = {t.user_attrs["rerun_of"]: t.number for t in trials
                if t.user_attrs.get("rerun_of") is not None}
    rows = []
    for t in trials:
        epochs = max(t.intermediate_values, default=None)
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values.get(epochs) if epochs is not None else None)
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), label: value,
                               "epochs": epochs}
        row.update({d.name: t.params.get(d.name) for d in space})
        run, worker = t.user_attrs.get("run_dir"), t.user_attrs.get("worker_lock")
        row.update({"seconds": seconds, "run": _relative(run, out) if run else None,
                    "process": Path(worker).stem if worker else None, "note": note(t, rerun_by)})
        rows.append(row)
    return rows


def _relative(run: str, out: Path) -> str:
    """A run folder as a path inside the tune folder where it is one."""
    for base in (out, out.resolve()):
        if Path(run).is_relative_to(base):
            return str(Path(run).relative_to(base))
    return run


def note(t: optuna.trial.FrozenTrial, rerun_by: dict[int, int]) -> str:
    parts = []
    if t.user_attrs.get("rerun_of") is not None:
        parts.append(f"reruns trial {t.user_attrs['rerun_of']}")
    if t.state == TrialState.PRUNED:
        parts.append(f"pruned after epoch {max(t.intermediate_values, default=0)}")
    if t.state == TrialState.FAIL:
        if t.number in rerun_by:
            parts.append(f"its process died; run again as trial {rerun_by[t.number]}")
        else:
            parts.append(f"failed: {t.user_attrs.get('error', 'see the tune output')}")
    return "; ".join(parts)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        spec = {"seconds": ".0f"}.get(column, ".2f" if column.startswith("best ") else ".4g")
        return format(value, spec)
    return str(value)


def markdown(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial],
             rows: Sequence[dict[str, Any]], best: optuna.trial.FrozenTrial | None,
             s: TuneSettings, space: Sequence[Dimension], plots: Sequence[str],
             notes: Sequence[str], label: str, url: str) -> str:
    sets = " ".join(f"--set {o}" for o in s.overrides)
    lines = [f"# kdlab tune: study {study.study_name}", "",
             f"- recipe `{s.recipe}`{' ' + sets if sets else ''}; "
             f"{study.user_attrs.get('kdlab', {}).get('epochs', '?')} epochs per trial",
             "- space: " + ", ".join(f"`{d.text}`" for d in space),
             f"- storage `{redacted(url)}`; this process: pruner {s.pruner} "
             f"(from epoch {s.prune_from}), sampler {s.sampler}"]
    if best is not None:
        lines.append(f"- best: trial {best.number}, {label} {best.value:.2f} "
                     "(recipe: `best.yaml`)")
    lines += ["", "| " + " | ".join(rows[0]) + " |" if rows else "",
              "|" + "---|" * len(rows[0]) if rows else ""]
    for row in rows:
        cells = [_cell(v, k) for k, v in row.items()]
        if best is not None and row["trial"] == best.number:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{p}]({p})" for p in plots), *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------- the best recipe
def write_best_recipe(best: optuna.trial.FrozenTrial, out: Path, s: TuneSettings,
                      metric: str, study_name: str) -> Path:
    """``OUT/best.yaml``: the recipe with ``--set``, the best trial's values and the search's
    epochs, into the run folder ``OUT/best``."""
    from kdlab.methods import METHODS

    tree = apply_overrides(read_yaml(s.recipe), s.overrides)
    values = {key: value for name, value in best.params.items() for key in name.split("+")}
    tree = assign(tree, values)
    if s.epochs is not None:
        tree.setdefault("schedule", {})["epochs"] = s.epochs
    tree.setdefault("train", {})["out_dir"] = str(out / "best")
    method = tree.get("method", {})
    name = method if isinstance(method, str) else method.get("name", "ce")
    command = "distill" if METHODS.get(str(name)).needs_teacher else "train"
    label = LABELS.get(metric, metric)
    shown = ", ".join(f"{k}={_cell(v)}" for k, v in best.params.items())
    header = [
        f"# kdlab tune: the best trial ({best.number}) of study {study_name}: "
        f"best {label} {best.value:.2f}",
        f"# from {s.recipe}" + "".join(f" --set {o}" for o in s.overrides),
        f"# searched values: {shown}",
        f"# Run: kdlab {command} {out / 'best.yaml'}",
    ]
    path = out / "best.yaml"
    atomic_write_text(path, "\n".join(header) + "\n"
                      + yaml.safe_dump(tree, sort_keys=False))
    return path


# --------------------------------------------------------------------- the plots
def write_plots(study: optuna.Study, out: Path, label: str) -> tuple[list[str], list[str]]:
    """Optuna's standard plots (matplotlib backend) as PNG files; returns the files drawn and
    a note for each plot the study cannot give yet (e.g. importances before two trials have
    completed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as backend

    drawn, notes = [], []
    for name, function in PLOTS.items():
        plt.close("all")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                plot = getattr(backend, function)
                if name == "intermediate.png":
                    axes = plot(study)
                    axes.set(xlabel="epoch", ylabel=f"validation {label[len('best '):]}")
                else:
                    axes = plot(study, target_name=label)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
            notes.append(f"{name} not drawn: {' '.join(str(e).split())[:160]}")
            continue
        figure = getattr(axes, "figure", None) or plt.gcf()
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        atomic_write(out / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
        drawn.append(name)
    return drawn, notes

"""The study of ``kdlab tune``: its database, its processes, and the loop that runs trials.

The study lives in an Optuna RDB storage: by default the SQLite file ``OUT/study.db``, or any
URL Optuna takes (``--storage postgresql://...``, ``mysql://...``). Everything the study
knows is in that database, so

- an interrupted search resumes by running the same command again;
- several processes pointed at the same database share one study: each runs one trial at a
  time, the TPE sampler spreads concurrent trials apart (``constant_liar``), and a process
  starts a new trial only while the study has fewer than ``--trials`` trials finished or
  running, so together they run ``--trials`` trials (two processes that start their last
  trials at the same instant may run one more).

A process holds a lock file ``OUT/workers/HOST.PID.lock`` for its life and records it in
each trial it runs. A trial left ``RUNNING`` by a dead process (kill -9, a crash, a lost
machine) is found in two ways: on the same machine, at once, because the dead process's lock
is free; from any machine, through Optuna's heartbeat, once the trial has not reported for
twice ``--heartbeat`` seconds. Either way the trial is marked failed and its values are run
again by a new trial, which continues the dead trial's run folder
(:mod:`kdlab.tools.tune.trial`). A trial stopped with Ctrl-C is queued again the same way.

The study records the search it was started with (the space and the base config, less the
settings that do not change a result, :data:`kdlab.training.resume.MAY_CHANGE`); a process
that joins it with another search is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdlab.core.config import RunConfig
from kdlab.errors import UserError
from kdlab.tools.tune.results import write_results
from kdlab.tools.tune.settings import TuneSettings, default_out, redacted
from kdlab.tools.tune.space import Dimension
from kdlab.tools.tune.trial import TrialRunner, rerun

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: dead workers are found by heartbeat only
    fcntl = None  # type: ignore[assignment]

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
#: trials in a row that fail in one process before it stops (the same mistake each time)
MAX_FAILURES_IN_A_ROW = 3
#: tries at opening the database (processes that create a new one at once race)
OPEN_ATTEMPTS = 5


# --------------------------------------------------------------------- database
def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """The study database at ``url``, with heartbeats; a dead trial found by them is rerun."""
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                    heartbeat_stale_trial_callback=rerun)
        except (IntegrityError, OperationalError) as e:
            # two processes creating a new database's tables at once: the loser retries
            if attempt == OPEN_ATTEMPTS - 1:
                raise _unopened(url, e) from None
            time.sleep(1.0 + attempt)
        except Exception as e:  # SQLAlchemy's URL and driver errors have no common base
            raise _unopened(url, e) from None
    raise AssertionError("unreachable")


def _unopened(url: str, e: BaseException) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return UserError(f"The study database {redacted(url)!r} cannot be opened ({first}); give "
                     "--storage an Optuna RDB URL such as sqlite:///study.db or "
                     "postgresql://user@host/db.")


def comparable(cfg: RunConfig) -> dict[str, Any]:
    """The base config as flat dotted keys, less what does not change a trial's result."""
    from kdlab.training.resume import MAY_CHANGE

    def flat(tree: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, value in tree.items()
                for k, v in flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}

    free = (MAY_CHANGE - {"data.batch_size"}) | {"train.out_dir"}
    return {k: v for k, v in flat(cfg.to_dict(), "").items() if k not in free}


def open_study(s: TuneSettings, storage: optuna.storages.RDBStorage, name: str,
               identity: dict[str, Any], trials_dir: Path) -> optuna.Study:
    """Create the study or join it; refuse to join one started with another search.
    ``identity["epochs"]`` is the epochs every trial runs (the pruner's last step)."""
    pruner = build_pruner(s, identity["epochs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=build_sampler(s), pruner=pruner,
                                    load_if_exists=True)
    recorded = study.user_attrs.get("kdlab")
    if recorded is None:
        if study.get_trials(deepcopy=False):
            raise UserError(f"Study {name!r} in {redacted(storage.url)!r} was not started by "
                            "kdlab tune; choose another --study.")
        if trials_dir.is_dir() and any(trials_dir.iterdir()):
            raise UserError(f"{str(trials_dir)!r} holds the trials of an earlier search whose "
                            "study is not in this database; choose another --out, or --storage "
                            "and --study of that search.")
        study.set_user_attr("kdlab", identity)
        return study
    differ = [k for k in ("space", "epochs") if recorded.get(k) != identity[k]]
    old, new = recorded.get("config", {}), identity["config"]
    differ += sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4
                                         else "")
        raise UserError(f"Study {name!r} in {redacted(storage.url)!r} searches something else "
                        f"(differs in {shown}); run its own command again to resume or join it, "
                        "or choose another --study / --out.")
    return study


def build_sampler(s: TuneSettings, done: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler; with ``--seed`` its seed moves on with the ``done`` trials the study
    already holds, so that a resumed search does not draw its first values again."""
    seed = None if s.seed is None else s.seed + 7919 * done
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)


def build_pruner(s: TuneSettings, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner; ``epochs`` is what every trial runs: ``--epochs``, else the recipe's
    ``schedule.epochs``. Hyperband's brackets span ``--prune-from`` to ``epochs`` (Li et al.,
    JMLR 2018, Algorithm 1: R = the most epochs a trial runs)."""
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=s.prune_from)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=s.prune_from,
                                              max_resource=max(epochs, s.prune_from))
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------- processes
class Worker:
    """This process's lock file ``OUT/workers/HOST.PID.lock``, held while it runs trials."""

    def __init__(self, out: Path) -> None:
        self.path = (out / "workers" / f"{socket.gethostname()}.{os.getpid()}.lock").resolve()
        self._fd: int | None = None

    def __enter__(self) -> Worker:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def worker_alive(lock: Path) -> bool:
    """Whether a live process holds the worker lock file ``lock`` (on this machine)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        lock.unlink()
    return False


def reclaim(study: optuna.Study, me: Path) -> list[int]:
    """Fail and queue again the trials left running by dead processes of this machine;
    returns their numbers."""
    host, found = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = t.user_attrs.get("worker_lock")
        if t.user_attrs.get("host") != host or not lock or Path(lock) == me:
            continue
        if worker_alive(Path(lock)):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        rerun(study, t)
        found.append(t.number)
    return found


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that count towards --trials: finished, running or queued; a failed trial that
    is run again counts once, as its rerun."""
    rerun_of = {t.user_attrs.get("rerun_of") for t in trials}
    return sum(1 for t in trials
               if t.state != TrialState.FAIL or t.number not in rerun_of)


# --------------------------------------------------------------------- the loop
def run_study(s: TuneSettings, study: optuna.Study, runner: TrialRunner, worker: Worker,
              say: Any) -> int:
    """Run trials until the study has ``s.trials``; returns how many this process ran."""
    ran = failures = 0
    while True:
        for number in reclaim(study, worker.path):
            say(f"trial {number} was left running by a process that died: marked failed, "
                "its values queued again")
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and counted(trials) >= s.trials:
            return ran
        try:
            study.optimize(runner, n_trials=1, catch=(UserError,))
        except KeyboardInterrupt:
            if runner.current is not None:
                stopped = next(t for t in study.get_trials(deepcopy=False)
                               if t.number == runner.current)
                if stopped.state == TrialState.FAIL:
                    rerun(study, stopped)
            raise
        ran += 1
        done = next(t for t in study.get_trials(deepcopy=False) if t.number == runner.current)
        say(describe(done, runner.metric))
        failures = failures + 1 if done.state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise UserError(f"{failures} trials in a row failed, the last with: "
                            f"{done.user_attrs.get('error', 'an error')}")


def describe(t: optuna.trial.FrozenTrial, metric: str) -> str:
    """One line on a finished trial."""
    from kdlab.training.report import LABELS

    label = LABELS.get(metric, metric)
    if t.state == TrialState.COMPLETE:
        return f"trial {t.number}: best {label} {t.value:.2f}"
    if t.state == TrialState.PRUNED:
        last = max(t.intermediate_values, default=0)
        score = t.intermediate_values.get(last)
        shown = f" ({label} {score:.2f})" if score is not None else ""
        return f"trial {t.number}: pruned after epoch {last}{shown}"
    return f"trial {t.number}: failed: {t.user_attrs.get('error', 'see the messages above')}"


def search(s: TuneSettings, base: RunConfig, space: Sequence[Dimension], metric: str) -> Path:
    """Open (or join) the study and run it; returns the tune folder."""
    out = Path(s.out) if s.out else default_out(s.recipe)
    out.mkdir(parents=True, exist_ok=True)
    url = s.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = s.study or out.resolve().name
    identity = {"space": [d.canonical() for d in space], "epochs": base.schedule.epochs,
                "config": comparable(base)}
    storage = open_storage(url, s.heartbeat)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kdlab prints a line per trial
    study = open_study(s, storage, name, identity, out / "trials")
    study.sampler = build_sampler(s, len(study.get_trials(deepcopy=False)))

    def say(text: str) -> None:
        print(f"tune: {text}", flush=True)

    def announce(trial: optuna.Trial, values: dict[str, Any], continued: str) -> None:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        say(f"trial {trial.number} -> {out / 'trials' / f'{trial.number:04d}'}: {shown}"
            + (f" ({continued})" if continued else ""))

    say(f"study {name!r} in {redacted(url)}: {counted(study.get_trials(deepcopy=False))} of "
        f"{s.trials} trials so far")
    with Worker(out) as worker:
        runner = TrialRunner(base.to_dict(), space, out, metric, base.schedule.epochs,
                             worker.path, announce)
        try:
            ran = run_study(s, study, runner, worker, say)
        except UserError:  # trials failed in a row: the table says how
            write_results(study, out, space, s, metric, url, say)
            raise
    say(f"this process ran {ran} trial(s)")
    write_results(study, out, space, s, metric, url, say)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

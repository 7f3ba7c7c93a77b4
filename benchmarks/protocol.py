"""What the accuracy benchmarks share: running one training command through the real CLI
(a subprocess), recording its result once (resumable), and summarising seeds.

A run whose folder holds ``bench_result.json`` is not run again; an interrupted run (a folder
without it) continues from its ``last.pt`` with ``--resume`` (kdlab's resume gives the weights
an uninterrupted run would have had; ``tests/cli/test_reliability.py``), or starts again
from scratch when it saved no epoch. Each record keeps the exact command, the wall time and
the machine's load before and after, so that a table can say what produced each number; a
resumed run's times add the epochs saved before (:func:`earlier_epochs`).

Several processes can share one list of runs (``run_one(..., shared=True)``): each run is
claimed first (a ``.<run>.claim`` file beside its folder, holding the claiming process's id),
and a run claimed by a live process is left to it; a claim whose process has ended is taken
over (that run was interrupted and continues).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    """The 1/5/15-minute load averages of this machine ('n/a' where unknown)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def kdlab_cmd() -> list[str]:
    """The ``kdlab`` console script of this interpreter's environment (relative to the
    repository root when inside it), or ``python -m kdlab``."""
    exe = Path(sys.executable).with_name("kdlab")
    if not exe.is_file():
        return [sys.executable, "-m", "kdlab"]
    try:
        return [str(exe.relative_to(ROOT))]
    except ValueError:
        return [str(exe)]


def portable(command: str) -> str:
    """``command`` as a results table records it: an interpreter or console script given by
    its path on this machine (``/.../.venv/bin/kdlab``) becomes its bare name (``kdlab``), so
    that committed results hold no machine paths."""
    try:
        words = shlex.split(command)
    except ValueError:  # free text (e.g. --teacher-command), not a command line
        return command
    if words and os.path.isabs(words[0]) and Path(words[0]).name.startswith(("kdlab", "python")):
        words[0] = "python" if Path(words[0]).name.startswith("python") else "kdlab"
    return shlex.join(words)


def hardware_line(threads: str) -> str:
    """The results tables' ``- hardware:`` line: CPU, cores, ``threads`` (how the runs used
    them, with its leading separator), the OpenMP wait policy, torch and Python versions."""
    import platform

    import torch

    from kdlab.runtime.threads import wait_policy
    from kdlab.tools.bench.bench import cpu_name

    return (f"- hardware: {cpu_name()}, {os.cpu_count()} cores{threads}, OpenMP waits "
            f"{wait_policy()}; torch {torch.__version__}, Python {platform.python_version()}")


class CommandFailed(SystemExit):
    """A benchmarked command ended with an error: ends the benchmark with its output."""

    def __init__(self, returncode: int, message: str) -> None:
        super().__init__(message)
        self.returncode = returncode


def run_command(cmd: list[str], threads: int | None, label: str) -> tuple[str, dict]:
    """Run one command from the repository root with ``threads`` torch threads (None: kdlab's
    thread policy, ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` removed from its environment);
    return its stdout and a record of the command, its wall time, its CPU time (user +
    system, of the command's processes: what a shared machine's load does not inflate much)
    and the machine's load around it. A failure ends the benchmark with the command's
    output."""
    import resource

    pinned = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in pinned}
    if threads is not None:
        env.update(dict.fromkeys(pinned, str(threads)))
    before = load()
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {shlex.join(cmd)}", flush=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    if proc.returncode != 0:
        raise CommandFailed(proc.returncode, f"{label} failed ({proc.returncode}): "
                            f"{shlex.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, {"command": portable(shlex.join(cmd)), "wall_s": round(wall, 1),
                         "cpu_s": round(cpu, 1), "load_before": before, "load_after": load()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_dir: Path) -> bool:
    """Claim ``run_dir`` for this process; False when a live process holds it already."""
    path = run_dir.parent / f".{run_dir.name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return True
            if pid and _alive(pid):
                return False
            path.unlink(missing_ok=True)  # its process ended: take the run over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def earlier_epochs(run_dir: Path, threads: int | None) -> dict | None:
    """What an interrupted run saved: the epochs in its ``last.pt`` and their wall and CPU
    seconds (``epoch_cpu_seconds``; for rows written before that column, wall seconds x
    torch threads, marked as such), or None where there is nothing to continue from."""
    from kdlab.errors import UserError
    from kdlab.training.checkpoint import load_checkpoint

    path = run_dir / "last.pt"
    if not path.is_file():
        return None
    try:  # mapped, not read: only the history is needed
        history = load_checkpoint(path, mmap=True).get("history", [])
    except UserError:  # an unreadable checkpoint: the run starts again
        return None
    rows = [r for r in history if "epoch_seconds" in r]
    if not rows:
        return None
    measured = all("epoch_cpu_seconds" in r for r in rows)
    cpu = sum(float(r["epoch_cpu_seconds"]) if measured else
              float(r["epoch_seconds"]) * float(r.get("cpu_threads") or threads or 1)
              for r in rows)
    return {"after_epoch": int(rows[-1]["epoch"]),
            "wall_s": round(sum(float(r["epoch_seconds"]) for r in rows), 1),
            "cpu_s": round(cpu, 1),
            "cpu_from": "epoch_cpu_seconds" if measured else "epoch_seconds x threads"}


def run_one(cmd: list[str], run_dir: Path, info: dict, threads: int,
            column: str = "val_student_top1", metric: str = "top1",
            shared: bool = False) -> dict | None:
    """Run one training command unless already finished; return its result record with
    ``best_<metric>`` / ``last_<metric>`` read from ``column`` of the run's metrics.csv and
    ``prev_<metric>`` (the evaluation before the last). ``shared``: other processes work on
    the same runs; None when one of them holds this run (:func:`claim`)."""
    done = run_dir / "bench_result.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        return dict(rec, command=portable(rec["command"]))
    if shared and not claim(run_dir):
        return None
    earlier = earlier_epochs(run_dir, threads)
    if earlier is None and run_dir.exists():  # interrupted before its first epoch was saved
        shutil.rmtree(run_dir)
    label = f"{info['row']} seed {info['seed']}"
    resume, how = ([], "") if earlier is None else (
        ["--resume"], f" (continues after epoch {earlier['after_epoch']})")
    try:
        stdout, ran = run_command(cmd + resume, threads, label + how)
    except CommandFailed as e:
        if earlier is None or e.returncode != 2:
            raise
        # kdlab refused to continue (exit 2, a user error: e.g. the recipe changed since)
        print(f"    cannot continue ({str(e.code).splitlines()[-1]}); starting again", flush=True)
        shutil.rmtree(run_dir)
        earlier = None
        stdout, ran = run_command(cmd, threads, label)
    values = [float(r[column]) for r in read_metrics(run_dir) if r.get(column)]
    rec = dict(info, command=portable(shlex.join(cmd)), wall_s=ran["wall_s"],  # no --resume
               cpu_s=ran["cpu_s"], epochs_run=len(values),
               load_before=ran["load_before"], load_after=ran["load_after"],
               stdout_tail=stdout.strip().splitlines()[-1:])
    if earlier is not None:
        rec["resumed"] = earlier
        rec["wall_s"] = round(rec["wall_s"] + earlier["wall_s"], 1)
        rec["cpu_s"] = round(rec["cpu_s"] + earlier["cpu_s"], 1)
    rec[f"best_{metric}"], rec[f"last_{metric}"] = max(values), values[-1]
    rec[f"prev_{metric}"] = values[-2] if len(values) > 1 else None
    write_record(run_dir, rec)
    print(f"    best {rec[f'best_{metric}']:.2f} last {rec[f'last_{metric}']:.2f} "
          f"wall {ran['wall_s']:.0f} s load {ran['load_before']} -> {ran['load_after']}",
          flush=True)
    return rec


def write_record(run_dir: Path, rec: dict) -> None:
    """Write the run's ``bench_result.json`` whole or not at all (kdlab's atomic write: a
    record is what marks a run finished, and two processes may write records at once)."""
    from kdlab.runtime.files import atomic_write_text

    atomic_write_text(run_dir / "bench_result.json", json.dumps(rec, indent=2) + "\n")


def command_line(rec: dict) -> str:
    """A table's "Exact commands" entry for one run record: row, seed, load, how it ran."""
    resumed = rec.get("resumed")
    how = (f"; interrupted after epoch {resumed['after_epoch']}, continued with --resume"
           if resumed else "")
    return f"- {rec['row']} seed {rec['seed']} (load {rec['load_before']}{how}): `{rec['command']}`"


def mean_std(xs: list[float]) -> str:
    """``mean ± sample std`` with two decimals ('-' for none, the value for one)."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}"

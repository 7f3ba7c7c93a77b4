"""What the accuracy benchmarks share: running one training command through the real CLI
(a subprocess), recording its result once (resumable), and summarising seeds.

A run whose folder holds ``bench_result.json`` is not run again; an interrupted run (a folder
without it) starts again from scratch. Each record keeps the exact command, the wall time and
the machine's load before and after, so that a table can say what produced each number.
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
    words = shlex.split(command)
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


def run_command(cmd: list[str], threads: int, label: str) -> tuple[str, dict]:
    """Run one command from the repository root with ``threads`` torch threads; return its
    stdout and a record of the command, its wall time and the machine's load around it. A
    failure ends the benchmark with the command's output."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = load()
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}): {shlex.join(cmd)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, {"command": portable(shlex.join(cmd)), "wall_s": round(wall, 1),
                         "load_before": before, "load_after": load()}


def run_one(cmd: list[str], run_dir: Path, info: dict, threads: int,
            column: str = "val_student_top1", metric: str = "top1") -> dict:
    """Run one training command unless already finished; return its result record with
    ``best_<metric>`` / ``last_<metric>`` read from ``column`` of the run's metrics.csv."""
    done = run_dir / "bench_result.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        return dict(rec, command=portable(rec["command"]))
    if run_dir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(run_dir)
    stdout, ran = run_command(cmd, threads, f"{info['row']} seed {info['seed']}")
    values = [float(r[column]) for r in read_metrics(run_dir) if r.get(column)]
    rec = dict(info, command=ran["command"], wall_s=ran["wall_s"], epochs_run=len(values),
               load_before=ran["load_before"], load_after=ran["load_after"],
               stdout_tail=stdout.strip().splitlines()[-1:])
    rec[f"best_{metric}"], rec[f"last_{metric}"] = max(values), values[-1]
    done.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"    best {rec[f'best_{metric}']:.2f} last {rec[f'last_{metric}']:.2f} "
          f"wall {ran['wall_s']:.0f} s load {ran['load_before']} -> {ran['load_after']}",
          flush=True)
    return rec


def mean_std(xs: list[float]) -> str:
    """``mean ± sample std`` with two decimals ('-' for none, the value for one)."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}"

"""The main job's wall time on an idle machine and beside one busy process.

Runs ``kdlab quickstart`` (the README's first command after installation: teacher, student
alone, KD and FCFD on Fashion-MNIST) from scratch into a fresh folder, ``--rounds`` times per
neighbour, neighbours alternating (``none``, then a pure-Python busy loop on the other core),
with the shipped thread policy (``train.threads: auto``). Before each run the script waits
until other processes use less than 10 % of a core (``thread_policy.wait_for_quiet``).

Writes ``quickstart_wall.csv`` (one row per run: wall seconds, load, how often the thread
governor switched) and ``quickstart_wall.md``.

Usage::

    python benchmarks/quickstart_wall.py --out benchmarks/results --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ROOT, hardware_line, kdlab_cmd, load  # noqa: E402
from thread_policy import BUSY, wait_for_quiet  # noqa: E402

NEIGHBOURS = {"none": [], "busy_loop": [BUSY]}
FIELDS = ["neighbour", "round", "wall_s", "switches", "load_before", "load_after", "others_cpu"]


def run_once(out: Path, neighbour: str, settle: float) -> dict[str, object]:
    """One quickstart from scratch beside ``neighbour``; its wall time and governor notes."""
    procs = [subprocess.Popen(cmd, start_new_session=True) for cmd in NEIGHBOURS[neighbour]]
    try:
        if procs:
            time.sleep(settle)
        others = wait_for_quiet({os.getpgid(p.pid) for p in procs})
        before = load()
        start = time.perf_counter()
        done = subprocess.run([*kdlab_cmd(), "quickstart", "--out", str(out), "--device", "cpu"],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    printed = (done.stdout + done.stderr).splitlines()
    switches = sum("CPU threads:" in line and " -> " in line for line in printed)
    return {"neighbour": neighbour, "wall_s": f"{wall:.1f}", "switches": switches,
            "load_before": before, "load_after": load(), "others_cpu": f"{others:.2f}"}


def report(rows: list[dict[str, str]], out: Path) -> None:
    lines = ["# The quickstart's wall time, idle and beside one busy process", "",
             hardware_line(", threads: auto (the shipped policy)"),
             "- command: `python benchmarks/quickstart_wall.py --out benchmarks/results`",
             "- each run: `kdlab quickstart --device cpu` from scratch (teacher, student alone, "
             "KD, FCFD); the busy process is `python -c 'while True: pass'`", "",
             "| neighbour | runs | wall time (s) | thread switches | load before |",
             "|---|---|---|---|---|"]
    for neighbour in NEIGHBOURS:
        mine = [r for r in rows if r["neighbour"] == neighbour]
        if mine:
            walls = [float(r["wall_s"]) for r in mine]
            each = ", ".join(f"{w:.0f}" for w in walls)
            lines.append(f"| {neighbour} | {len(mine)} | {statistics.median(walls):.0f} ({each}) | "
                         f"{', '.join(str(r['switches']) for r in mine)} | "
                         f"{', '.join(r['load_before'] for r in mine)} |")
    (out / "quickstart_wall.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds the neighbour runs before the quickstart starts")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quickstart_wall.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    with tempfile.TemporaryDirectory(prefix="kdlab-quickstart-wall-") as scratch:
        for r in range(args.rounds):
            for neighbour in NEIGHBOURS:
                row = run_once(Path(scratch) / f"{neighbour}-{r}", neighbour, args.settle)
                row["round"] = str(len([x for x in rows if x["neighbour"] == neighbour]))
                rows.append({k: str(v) for k, v in row.items()})
                print(row, flush=True)
                with path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=FIELDS)
                    w.writeheader()
                    w.writerows(rows)
                report(rows, out)


if __name__ == "__main__":
    main()

"""What the CPU thread policy buys: training step times with and without a busy neighbour.

For each *neighbour* (nothing; a pure-Python busy loop; a single-thread kdlab training at nice
10; a single-thread ``kdlab bench`` at nice 10 in a loop; a second kdlab training under
kdlab's own policy, not niced, as a user starts two runs; two busy loops) the script starts the
neighbour, lets it settle, then runs every *workload* under every *policy* in turn, ``--rounds``
times (the order rotates by round, so each policy meets the neighbour's phases alike):

- policies: ``fixed`` (all cores, OpenMP's default spin-wait: what torch does and kdlab did
  before the policy), ``passive`` (all cores, ``OMP_WAIT_POLICY=PASSIVE``), ``one`` (one
  thread) and ``auto`` (kdlab's policy: all cores, one while they are shared — a training's
  governor, a bench's look at the cores before it starts); trainings run ``fixed``, ``one``
  and ``auto``, benches ``fixed``, ``passive``, ``one`` and ``auto``;
- workloads: short trainings through the CLI (``fmnist``: resnet20 on Fashion-MNIST, the
  quickstart's teacher; ``scenes_seg``: seg_resnet20; ``scenes_det``: frcnn_tiny_r18), whose
  ``images_per_s`` gives the mean step time over the epoch (governor probes included), and
  ``kdlab bench`` presets (``bench:cpu``: the ``cpu`` preset; ``bench:cifar``: the paper's
  resnet32x4 -> resnet8x4 pair; ``bench:tiny``: a small pair whose ops are short; median step
  time).

Writes ``thread_policy.csv`` (one row per measurement) and ``thread_policy.md`` (per neighbour
and workload: median ms per policy and each policy's ratio to ``one`` in the same round).

Before each measurement the script waits until processes other than itself and the neighbour
use less than 10 % of a core (recorded as ``others_cpu``), so that a shared machine does not
spoil the comparison.

Usage::

    python benchmarks/thread_policy.py --out benchmarks/results --rounds 2
    python benchmarks/thread_policy.py --out benchmarks/results --report-only
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ROOT, hardware_line, kdlab_cmd, load, read_metrics  # noqa: E402

POLICIES = {  # name -> (environment, --set for trainings / --threads for bench)
    "fixed": ({}, "2"),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "2"),
    "one": ({}, "1"),
    "auto": ({}, "auto"),
}
#: the trainings compare what torch does, one thread and kdlab's policy; passive waiting (which
#: costs 1.3-2.7x on an idle machine here) is compared on the cheaper bench workloads
TRAINING_POLICIES = ("fixed", "one", "auto")
BENCH_POLICIES = ("fixed", "passive", "one", "auto")
TRAININGS = {  # name -> (recipe, settings, batch)
    "fmnist": ("recipes/fashion_mnist/ce/resnet20.yaml",
               ["train.max_steps_per_epoch=120", "data.val_subset=500",
                "schedule.milestones=[]"], 64),
    "scenes_seg": ("recipes/scenes_seg/ce/seg_resnet20.yaml",
                   ["train.max_steps_per_epoch=50", "data.scenes_train=1600",
                    "data.scenes_val=100"], 32),
    "scenes_det": ("recipes/scenes_det/ce/frcnn_tiny_r18.yaml",
                   ["train.max_steps_per_epoch=30", "data.scenes_train=480",
                    "data.scenes_val=64", "schedule.warmup_epochs=0"], 16),
}
BENCHES = {"bench:cpu": ["--preset", "cpu", "--steps", "20", "--warmup", "3"],
           "bench:cifar": ["--preset", "cifar", "--steps", "3", "--warmup", "1"],
           "bench:tiny": ["--preset", "tiny", "--steps", "40", "--warmup", "6"]}
BUSY = [sys.executable, "-c", "while True: pass"]


def neighbour_commands(scratch: Path) -> dict[str, list[list[str]]]:
    """Each neighbour as the commands to start (single-thread kdlab jobs at nice 10)."""
    nice = ["nice", "-n", "10"]
    train = [*nice, *kdlab_cmd(), "train", "recipes/scenes_seg/ce/seg_resnet20.yaml",
             "--out", str(scratch / "neighbour"), "--set", "train.threads=1", "--set",
             "train.progress=none", "--set", "schedule.epochs=50", "--set",
             "data.scenes_val=100"]
    bench = ["bash", "-c", f"while true; do {' '.join([*nice, *kdlab_cmd()])} bench --preset "
             "scenes_seg --methods ce,kd --steps 30 --warmup 2 --threads 1 --no-flops "
             ">/dev/null; done"]
    # a second run as a user starts it: kdlab's own policy, not niced (the thread count is
    # auto, so the neighbour's OMP_NUM_THREADS=1 is removed for it)
    second = ["env", "-u", "OMP_NUM_THREADS", *kdlab_cmd(), "train",
              "recipes/scenes_seg/ce/seg_resnet20.yaml", "--out", str(scratch / "second"),
              "--set", "train.threads=auto", "--set", "train.progress=none", "--set",
              "schedule.epochs=50", "--set", "data.scenes_val=100"]
    return {"none": [], "busy_loop": [BUSY], "kdlab_train_nice10": [train],
            "kdlab_bench_nice10": [bench], "kdlab_train_auto": [second],
            "two_busy_loops": [BUSY, BUSY]}


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (process group, user + system clock ticks so far), for every process."""
    ticks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks[int(stat.parent.name)] = (int(fields[2]), int(fields[11]) + int(fields[12]))
    return ticks


def wait_for_quiet(neighbour_groups: set[int], limit: float = 0.10, window: float = 2.0,
                   patience: float = 900.0) -> float:
    """Wait until processes other than this benchmark and its neighbours use less than
    ``limit`` of a core over ``window`` seconds (others on a shared machine would spoil the
    measurement); returns the share measured last (after ``patience`` seconds it goes on)."""
    hz = os.sysconf("SC_CLK_TCK")
    ours = {os.getpid(), os.getppid()} | neighbour_groups
    deadline = time.monotonic() + patience
    while True:
        before = _cpu_ticks()
        time.sleep(window)
        after = _cpu_ticks()
        other = sum(t - before[pid][1] for pid, (group, t) in after.items()
                    if pid in before and pid not in ours and group not in ours)
        share = other / hz / window
        if share < limit or time.monotonic() > deadline:
            return share
        print(f"  waiting: other processes use {100 * share:.0f} % of a core", flush=True)


@contextlib.contextmanager
def neighbour(cmds: list[list[str]], settle: float) -> Iterator[set[int]]:
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
             for c in cmds]
    try:
        time.sleep(settle if procs else 0)
        yield {p.pid for p in procs}  # each neighbour leads its own process group
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def environment(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(POLICIES[policy][0])
    return env


def checked(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def run_training(name: str, policy: str, scratch: Path) -> float:
    """Mean ms per training step of a short run (from its images_per_s)."""
    recipe, settings, batch = TRAININGS[name]
    out = scratch / f"{name}-{policy}-{time.monotonic_ns()}"
    sets = [*settings, "schedule.epochs=1", "train.progress=none",
            f"train.threads={POLICIES[policy][1]}", "train.eval_every=1"]
    cmd = [*kdlab_cmd(), "train", recipe, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    checked(cmd, environment(policy))
    rows = read_metrics(out)
    return 1000.0 * batch / float(rows[-1]["images_per_s"])


def run_bench(name: str, policy: str, scratch: Path) -> float:
    """Median ms per step of ``kdlab bench`` (method ce, the student alone)."""
    csv_path = scratch / f"{name.replace(':', '_')}-{policy}.csv"
    cmd = [*kdlab_cmd(), "bench", *BENCHES[name], "--methods", "ce", "--no-flops",
           "--device", "cpu", "--threads", POLICIES[policy][1], "--out", str(csv_path)]
    checked(cmd, environment(policy))
    with csv_path.open() as f:
        row = next(csv.DictReader(line for line in f if not line.startswith("#")))
    return float(row["ms_median"])


def measure(args: argparse.Namespace, out_csv: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="kdlab-threads-"))
    neighbours = neighbour_commands(scratch)
    chosen = args.neighbours.split(",") if args.neighbours else list(neighbours)
    workloads = args.workloads.split(",") if args.workloads else [*TRAININGS, *BENCHES]
    new = not out_csv.exists()
    with out_csv.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["neighbour", "workload", "round", "policy", "ms_per_step",
                             "load_before", "others_cpu", "time"])
        for name in chosen:
            with neighbour(neighbours[name], args.settle) as groups:
                for rnd in range(args.rounds):
                    for workload in workloads:
                        policies = TRAINING_POLICIES if workload in TRAININGS else BENCH_POLICIES
                        if args.policies:
                            policies = tuple(p for p in policies if p in args.policies.split(","))
                        shift = rnd % len(policies)
                        for policy in policies[shift:] + policies[:shift]:
                            others = wait_for_quiet(groups)
                            before = load()
                            run = run_training if workload in TRAININGS else run_bench
                            ms = run(workload, policy, scratch)
                            writer.writerow([name, workload, rnd, policy, f"{ms:.2f}", before,
                                             f"{others:.2f}", time.strftime("%H:%M:%S")])
                            f.flush()
                            print(f"{name:20s} {workload:12s} r{rnd} {policy:8s} {ms:9.1f} ms"
                                  f"  load {before}", flush=True)


def report(out_csv: Path, out_md: Path, command: str) -> None:
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for r in rows:
        by_round = cells.setdefault((r["neighbour"], r["workload"]), {})
        by_round.setdefault(r["round"], {})[r["policy"]] = float(r["ms_per_step"])
    order = [p for p in POLICIES]
    lines = [
        "# CPU thread policy: step times beside a busy neighbour",
        "",
        hardware_line(", 2 threads unless the policy says 1"),
        f"- command: `{command}`",
        f"- measured: {rows[0]['time'] if rows else '-'} to {rows[-1]['time'] if rows else '-'}"
        f"; load before each measurement from {min(r['load_before'] for r in rows)} to "
        f"{max(r['load_before'] for r in rows)} (1/5/15 min); other processes used at most "
        f"{max(float(r.get('others_cpu') or 0) for r in rows):.2f} of a core just before each "
        "measurement (the script waits for < 0.10)",
        "- policies: `fixed` = all cores with OpenMP's default spin-wait (torch's default, kdlab "
        "before this policy); `passive` = all cores, `OMP_WAIT_POLICY=PASSIVE`; `one` = one "
        "thread; `auto` = kdlab's policy (all cores, fewer while other processes use them: "
        "docs/threads.md). Trainings: "
        "mean ms per step over the epoch (`images_per_s`), probes of the governor included; "
        "bench: median ms per step (the student alone).",
        "- each cell: median over rounds of the policy's ms per step, and in brackets the "
        "median over rounds of its ratio to `one` in the same round",
        "",
        "| neighbour | workload | " + " | ".join(order) + " |",
        "|---|---|" + "---|" * len(order),
    ]
    for (nb, workload), by_round in cells.items():
        out = []
        for policy in order:
            values = [v[policy] for v in by_round.values() if policy in v]
            ratios = [v[policy] / v["one"] for v in by_round.values()
                      if policy in v and "one" in v]
            out.append("-" if not values else
                       f"{statistics.median(values):.0f} ({statistics.median(ratios):.2f}x)")
        lines.append(f"| {nb} | {workload} | " + " | ".join(out) + " |")
    out_md.write_text("\n".join(lines) + "\n")
    print(out_md.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settle", type=float, default=25.0,
                   help="seconds a neighbour runs before the first measurement")
    p.add_argument("--neighbours", help="comma list (default: all)")
    p.add_argument("--workloads", help="comma list (default: all)")
    p.add_argument("--policies", help="comma list of policies to run where a workload has them "
                   "(default: fixed,one,auto for trainings, fixed,passive,one for bench)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--name", default="thread_policy", help="results file name (csv and md)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    out_csv, out_md = out / f"{args.name}.csv", out / f"{args.name}.md"
    if not args.report_only:
        measure(args, out_csv)
    command = "python benchmarks/thread_policy.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only")
    report(out_csv, out_md, command.strip())


if __name__ == "__main__":
    main()

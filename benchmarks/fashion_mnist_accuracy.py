"""Fashion-MNIST accuracy table: teacher, student alone, KD, FitNet, FCFD and its ablations.

Protocol (FCFD issue, "Benchmark"): one teacher is trained once with ``kdlab train``; then,
for every seed, each row trains the same student from that teacher with ``kdlab distill``
(``kdlab train`` for the student alone) on the same training subset, for the same epochs,
with the same optimiser and schedule. Every run goes through the real CLI and trainer
(a subprocess per run, recipes from ``recipes/fashion_mnist/`` plus ``--set`` overrides);
the best and last top-1 are read from each run's ``metrics.csv``.

Resumable: a run whose folder holds ``bench_result.json`` is skipped; the tables are
rewritten from all finished runs at the end of every run. Not part of the test suite.

    .venv/bin/python benchmarks/fashion_mnist_accuracy.py              # the default table
    .venv/bin/python benchmarks/fashion_mnist_accuracy.py --methods ce,kd,dkd,rkd --seeds 0,1,2

Writes ``benchmarks/results/fashion_mnist_accuracy.{md,csv}``; run folders go under
``runs/bench/fashion_mnist_accuracy/`` (not committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from protocol import (
    ROOT,
    command_line,
    hardware_line,
    kdlab_cmd,
    mean_std,
    portable,
    run_command,
    run_one,
)

RECIPES = Path("recipes/fashion_mnist")  # relative to ROOT, the runs' working folder


@dataclass(frozen=True)
class Row:
    """One row of the table: how to run it (recipe + method overrides)."""

    name: str
    label: str
    recipe: str  # relative to recipes/fashion_mnist
    overrides: tuple[str, ...] = ()
    needs_teacher: bool = True
    teacher_cache: bool = False  # trains from a teacher soft-label cache (`kdlab cache-teacher`)


SAME_BATCH = ("data.batch_size=64", "optim.lr=0.05")

# Recipes name their own teacher/student pair; the script overrides model.* so that every
# row uses the same pair. Method hyper-parameters are the recipes' (the papers' defaults).
ROWS: dict[str, Row] = {r.name: r for r in (
    Row("ce", "student alone (CE)", "ce/resnet8.yaml", needs_teacher=False),
    Row("kd", "KD (Hinton, tau=4)", "kd/resnet8_from_resnet20.yaml"),
    # the same KD reading the teacher's fp16 logits on K stored views (issue 13, item 1)
    Row("kd_cached", "KD from the teacher cache (K views, fp16 logits)",
        "kd/resnet8_from_resnet20.yaml", teacher_cache=True),
    Row("fitnet", "FitNet (hint at stage 2, weight 100)", "fitnet/resnet8_from_resnet32.yaml"),
    Row("fcfd", "FCFD (L_app + L_func + L_func', |S|=2)", "fcfd/resnet8_from_resnet20.yaml"),
    # the frozen teacher's BN on batch statistics (issue 14's teacher-BN A/B)
    Row("kd_bn_batch", "KD, teacher BN on batch statistics", "kd/resnet8_from_resnet20.yaml",
        ("method.teacher_bn=batch",)),
    Row("fcfd_bn_batch", "FCFD, teacher BN on batch statistics",
        "fcfd/resnet8_from_resnet20.yaml", ("method.teacher_bn=batch",)),
    Row("fcfd_app", "FCFD app only (L_app + L_kd)", "fcfd/resnet8_from_resnet32_app_only.yaml"),
    Row("fcfd_func", "FCFD func only (L_func + L_func' + L_kd)",
        "fcfd/resnet8_from_resnet32_func_only.yaml"),
    # other registered methods (part 4 of the brief), same pair and protocol
    Row("dkd", "DKD", "dkd/resnet8_from_resnet20.yaml"),
    Row("at", "AT", "at/resnet8_from_resnet32.yaml"),
    Row("rkd", "RKD", "rkd/resnet8_from_resnet20.yaml"),
    Row("sp", "SP", "sp/resnet8_from_resnet20.yaml"),
    Row("cc", "CC", "cc/resnet8_from_resnet20.yaml"),
    Row("irg", "IRG", "irg/resnet8_from_resnet20.yaml"),
    Row("vid", "VID", "vid/resnet8_from_resnet32.yaml"),
    Row("ofd", "OFD", "ofd/resnet8_from_resnet32.yaml"),
    # the default training subset has 6,000 images: fewer than the recipe's 16384 negatives
    Row("crd", "CRD (4096 negatives)", "crd/resnet8_from_resnet32.yaml",
        ("method.num_negatives=4096",)),
    Row("reviewkd", "ReviewKD", "reviewkd/resnet8_from_resnet32.yaml"),
    Row("simkd", "SimKD", "simkd/resnet8_from_resnet32.yaml"),
    # distillation without a fixed teacher (issue 5): self-KD and online KD
    # the FRSKD recipes use the authors' batch 128 / LR 0.1: set the other rows' 64 / 0.05
    # (the same LR per sample), so that every row takes the same number of steps
    Row("frskd", "FRSKD (self-teacher)", "frskd/resnet8_from_self.yaml", SAME_BATCH,
        needs_teacher=False),
    Row("frskd_f", "FRSKD\\F (soft labels only)", "frskd/resnet8_from_self_f.yaml", SAME_BATCH,
        needs_teacher=False),
    Row("dml", "DML (two resnet8 peers)", "dml/resnet8_from_resnet8.yaml", needs_teacher=False),
    Row("online_fcfd", "online FCFD (resnet8 with a resnet20 trained alongside)",
        "online_fcfd/resnet8_with_resnet20.yaml", needs_teacher=False),
)}
DEFAULT_METHODS = "ce,kd,fitnet,fcfd,fcfd_app,fcfd_func"


def common_overrides(args: argparse.Namespace, epochs: int, seed: int) -> list[str]:
    sets = [
        f"schedule.epochs={epochs}",
        "schedule.name=cosine",
        "schedule.warmup_epochs=0",
        f"train.seed={seed}",
        "train.device=cpu",
        "train.progress=none",
    ]
    if args.train_subset:
        sets.append(f"data.train_subset={args.train_subset}")
    if args.val_subset:
        sets.append(f"data.val_subset={args.val_subset}")
    return sets


def write_tables(args: argparse.Namespace, teacher: dict | None, recs: list[dict],
                 total_s: float) -> None:

    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["row", "label", "seed", "best_top1", "last_top1", "epochs_run", "wall_s",
              "load_before", "load_after", "command"]
    with (out / "fashion_mnist_accuracy.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in ([teacher] if teacher else []) + recs:
            w.writerow(r)

    subset = args.train_subset or "all 60000"
    lines = [
        "# Fashion-MNIST accuracy: teacher, student alone, KD, FitNet, FCFD and ablations",
        "",
        f"Generated by `benchmarks/fashion_mnist_accuracy.py` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- pair: {args.teacher} (teacher) -> {args.student} (student)",
        f"- data: Fashion-MNIST, first {subset} training images, "
        f"{'first ' + str(args.val_subset) if args.val_subset else 'all 10000'} test images "
        "as the validation set; recipe augmentation",
        f"- students: {args.epochs} epochs, SGD (recipe LR / momentum / weight decay), "
        "cosine schedule, batch 64; teacher: "
        f"{args.teacher_epochs} epochs, same subset and schedule, seed 0",
        f"- seeds: {args.seeds}; top-1 in % on the validation set, mean ± sample std",
        hardware_line(f", shared with other jobs; {args.threads} torch thread(s) per run "
                      "(OMP_NUM_THREADS)"),
        f"- script command: `{args.command}`",
        f"- total wall time of the runs in this table: {total_s / 60:.1f} min",
        "",
    ]
    if teacher:
        lines += [f"Teacher {args.teacher}: best {teacher['best_top1']:.2f}, last "
                  f"{teacher['last_top1']:.2f} (wall {teacher['wall_s']:.0f} s).", ""]
    lines += ["| row | best top-1 | last top-1 | per seed (last) | wall s / run |",
              "|---|---|---|---|---|"]
    by_row: dict[str, list[dict]] = {}
    for r in recs:
        by_row.setdefault(r["row"], []).append(r)
    for name, rs in by_row.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        per = ", ".join(f"{r['last_top1']:.2f}" for r in rs)
        wall = statistics.fmean(r["wall_s"] for r in rs)
        label = ROWS[name].label.replace("|", "\\|")
        lines.append(f"| {label} | {mean_std([r['best_top1'] for r in rs])} | "
                     f"{mean_std([r['last_top1'] for r in rs])} | {per} | {wall:.0f} |")
    caches = sorted(Path(args.runs).glob("teacher_cache/*.kdcache.json"))
    if caches:
        lines += ["", "## Teacher caches", ""]
    for path in caches:
        meta = json.loads(path.read_text())
        rec = path.with_name(path.name.replace(".kdcache.json", ".command.json"))
        how = json.loads(rec.read_text()) if rec.is_file() else {}
        command = portable(how.get("command", ""))
        lines.append(f"- `{path.with_suffix('')}`: {meta['data']['train_size']} images x "
                     f"{meta['views']} views, {meta['output']['format']}, "
                     f"{meta['bytes'] / 2**20:.1f} MiB, built in {meta['build_seconds']:.0f} s "
                     f"(load {how.get('load_before', 'n/a')}): `{command}`")
    lines += ["", "## Exact commands", ""]
    for r in ([teacher] if teacher else []) + recs:
        lines.append(command_line(r))
    lines.append("")
    notes = out / "fashion_mnist_accuracy_notes.md"
    if notes.is_file():  # hand-written interpretation, kept across regenerations
        lines += [notes.read_text()]
    (out / "fashion_mnist_accuracy.md").write_text("\n".join(lines))


def build_cache(args: argparse.Namespace, kd: list[str], row: Row, sets: list[str],
                runs: Path) -> Path:
    """The row's teacher cache (``kdlab cache-teacher``, once for all seeds: a finished cache
    is kept); the command, wall time and load go to ``<cache>.command.json``."""
    folder = runs / "teacher_cache"
    path = folder / f"fashion_mnist-n{args.train_subset}-k{args.cache_views}.kdcache"
    common = [s for s in common_overrides(args, args.epochs, 0) if s.startswith("data.")]
    cmd = kd + ["cache-teacher", str(RECIPES / row.recipe),
                *sum((["--set", s] for s in sets + common + ["train.device=cpu"]), []),
                "--views", str(args.cache_views), "--out", str(path)]
    record = folder / path.name.replace(".kdcache", ".command.json")
    if path.is_file() and record.is_file():
        return path
    stdout, ran = run_command(cmd, args.threads, "teacher cache")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(ran, indent=2))
    said = [line for line in stdout.splitlines() if line.startswith("teacher cache")]
    print(f"    {said[0] if said else stdout.strip()[-300:]}", flush=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated rows from: {', '.join(ROWS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--train-subset", type=int, default=6000)
    p.add_argument("--val-subset", type=int, default=0, help="0 = the whole test set")
    p.add_argument("--cache-views", type=int, default=8,
                   help="views per image of the teacher cache (rows that train from it)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1 is robust on a shared machine)")
    p.add_argument("--runs", default="runs/bench/fashion_mnist_accuracy",
                   help="run folders, relative to the repository root")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the tables from the runs already finished")
    args = p.parse_args()
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    args.command = ("python benchmarks/fashion_mnist_accuracy.py " + shlex.join(argv)).strip()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    os.chdir(ROOT)
    kd = kdlab_cmd()

    t_dir = runs / f"teacher_{args.teacher}"
    t_cmd = kd + ["train", str(RECIPES / "ce" / "resnet20.yaml"),
                  "--set", f"model.student={args.teacher}",
                  *sum((["--set", s] for s in common_overrides(args, args.teacher_epochs, 0)), []),
                  "--out", str(t_dir)]
    if args.report_only:
        done = [json.loads(p.read_text()) for p in sorted(runs.glob("*/seed*/bench_result.json"))]
        recs = sorted((r for r in done if r["row"] in methods),
                      key=lambda r: (r["seed"], methods.index(r["row"])))
        t_rec = t_dir / "bench_result.json"
        teacher = json.loads(t_rec.read_text()) if t_rec.is_file() else None
        all_recs = ([teacher] if teacher else []) + recs
        write_tables(args, teacher, recs, sum(r["wall_s"] for r in all_recs))
        print(f"written to {Path(args.results) / 'fashion_mnist_accuracy.md'}")
        return 0
    teacher = run_one(t_cmd, t_dir, {"row": "teacher", "label": f"teacher {args.teacher}",
                                     "seed": 0}, args.threads)
    ckpt = t_dir / "best.pt"

    recs: list[dict] = []
    for seed in seeds:
        for name in methods:
            row = ROWS[name]
            sets = [f"model.student={args.student}"]
            if row.needs_teacher:
                sets += [f"model.teacher={args.teacher}", f"model.teacher_checkpoint={ckpt}"]
            if name.startswith("fcfd"):  # recipe: 2 of 30 epochs; a 4-epoch run gets none
                sets.append("method.l2_warmup_epochs=1")
            if row.teacher_cache:
                cache = build_cache(args, kd, row, sets[:3], runs)
                sets.append(f"data.teacher_cache={cache}")
            sets += list(row.overrides) + common_overrides(args, args.epochs, seed)
            r_dir = runs / name / f"seed{seed}"
            cmd = kd + ["distill" if row.needs_teacher else "train", str(RECIPES / row.recipe),
                        *sum((["--set", s] for s in sets), []), "--out", str(r_dir)]
            recs.append(run_one(cmd, r_dir, {"row": name, "label": row.label, "seed": seed},
                                args.threads))
            write_tables(args, teacher, recs, sum(r["wall_s"] for r in [teacher, *recs]))
    print(f"written to {Path(args.results) / 'fashion_mnist_accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy tables of the dense tasks on Fashion-MNIST scenes (segmentation: mIoU;
detection: COCO mAP and AP50), every method on one footing.

Protocol: the teacher is trained once (seed 0) with ``kdlab train``; then, for every seed,
each row trains the same student from that teacher with ``kdlab distill`` (``kdlab train``
for the student alone) on the same generated scenes, with the recipes' schedule (the
recipes' epochs unless ``--epochs`` / ``--teacher-epochs`` say otherwise), one torch thread
per run (``train.threads``). Every run goes through the real CLI and trainer (a subprocess
per run, the row's recipe plus ``--set`` overrides); the numbers are read from each run's
``metrics.csv``. Not part of the tests.

Resumable and shareable: a finished run (its ``bench_result.json``) is never run again, an
interrupted one continues from its last saved epoch (``--resume``), and the tables are always
written from every finished run on disk, so the script can be stopped,
started again, run with ``--rows``/``--seeds`` subsets, or run by two processes at once (two
single-thread runs side by side on two cores; each run is claimed by one process, see
``benchmarks/protocol.py``). ``--report-only`` rewrites the tables from the finished runs.

Continued on another machine: a table that takes longer than one machine is kept keeps its
teacher with the results (``--publish-teacher``: the weights exported once, a few MB, in
``benchmarks/teachers/<dataset>/<teacher>/``, their sha256 in the table), because training the
teacher again elsewhere gives another teacher (other CPUs round differently, and training
amplifies it). A later ``--teacher-run benchmarks/teachers/<dataset>/<teacher>`` adopts that
file; the runs the committed CSV lists come back as finished records (:func:`restore_finished`),
and a teacher on disk that does not end as the CSV's teacher row stops the benchmark.

    python benchmarks/dense_accuracy.py --task segmentation
    python benchmarks/dense_accuracy.py --task detection --seeds 0

The tables at convergence (issue 21): every row, 3 seeds, the recipes' full data (10,000 /
2,000 scenes) and schedule, one thread per run, two processes sharing the runs on two cores;
the teacher is trained by the first process that claims it and reused by every row after::

    python benchmarks/dense_accuracy.py --task detection --seeds 0,1,2 &
    python benchmarks/dense_accuracy.py --task detection --seeds 0,1,2; wait
    python benchmarks/dense_accuracy.py --task segmentation --seeds 0,1,2 &
    python benchmarks/dense_accuracy.py --task segmentation --seeds 0,1,2; wait

Check each table's "last - previous epoch" column: a row whose last epoch still moves by more
than the seeds' spread is not at a plateau (raise the recipes' ``epochs`` and run again: the
finished runs of other rows are kept).

Adding a row later (same teacher, same protocol): add a :class:`Row` to the task's table
below (its recipe folder under ``recipes/<dataset>/``, a student recipe named
``<student>_from_<teacher>.yaml``), then run ``--rows <name>``: the teacher's finished run is
reused, and the table is rewritten with every row. Writes
``benchmarks/results/scenes_{seg,det}_accuracy.{md,csv}``; run folders go under
``runs/bench/`` (not committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
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
    read_metrics,
    run_command,
    run_one,
    write_record,
)

from kdlab.data.scene_sets import SCENE_CLASSES


@dataclass(frozen=True)
class Row:
    """One row: its recipe folder under ``recipes/<dataset>/`` (``ce`` = the student alone)."""

    name: str
    label: str
    recipe_dir: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """One task's table: data set, pair, metric columns and rows."""

    dataset: str
    teacher: str
    student: str
    metric: str  # the primary metric (its val_student_<metric> column)
    extra: str  # a second metric shown beside it
    rows: tuple[Row, ...]


TABLES = {
    "segmentation": Table("scenes_seg", "seg_resnet20", "seg_resnet8", "miou", "pixel_acc", (
        Row("ce", "student alone (CE)", "ce"),
        Row("kd", "pixel-wise KD", "kd"),
        Row("skd_pixel", "SKD pixel-wise", "skd_pixel"),
        Row("skd_pixel_pair", "SKD pixel + pair-wise", "skd_pixel_pair"),
        Row("skd", "SKD pixel + pair-wise + holistic", "skd"),
        Row("cwd", "CWD (score maps)", "cwd"),
        Row("fcfd", "FCFD (decoder as the lens)", "fcfd"),
    )),
    "detection": Table("scenes_det", "frcnn_tiny_r18", "frcnn_tiny_r10", "map", "ap50", (
        Row("ce", "student alone", "ce"),
        Row("kd", "KD on ROI outputs", "kd"),
        Row("fitnet", "FPN imitation (L_app only)", "fitnet"),
        Row("fcfd", "FCFD (App. D)", "fcfd"),
        Row("fcfd_inherit", "FCFD + inherit (App. E)", "fcfd_inherit"),
        Row("fgfi", "FGFI (masked FPN imitation)", "fgfi"),
        Row("reviewkd", "ReviewKD on the FPN", "reviewkd"),
    )),
}


def recipe(table: Table, row: Row) -> Path:
    folder = Path("recipes") / table.dataset / row.recipe_dir
    name = table.student if row.recipe_dir == "ce" else f"{table.student}_from_{table.teacher}"
    return folder / f"{name}.yaml"


def common_overrides(args: argparse.Namespace, epochs: int | None, seed: int) -> list[str]:
    out = [f"train.seed={seed}", "train.device=cpu", "train.progress=none",
           f"train.threads={args.threads}"]
    if epochs is not None:
        out.append(f"schedule.epochs={epochs}")
    if args.scenes_train is not None:
        out.append(f"data.scenes_train={args.scenes_train}")
    if args.scenes_val is not None:
        out.append(f"data.scenes_val={args.scenes_val}")
    return out


def sets(values: list[str]) -> list[str]:
    return sum((["--set", v] for v in values), [])


def extra_value(run_dir: Path, column: str) -> float | None:
    rows = [r for r in read_metrics(run_dir) if r.get(column)]
    return float(rows[-1][column]) if rows else None


def curve(run_dir: Path, column: str) -> list[float]:
    return [float(r[column]) for r in read_metrics(run_dir) if r.get(column)]


def run_config(run_dir: Path) -> dict:
    """A finished run's resolved config (its ``config.yaml``), {} when absent."""
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def class_iou_lines(run_dir: Path, names: tuple[str, ...] | None) -> list[str]:
    """The teacher's per-class IoU (its report's ``class_iou.csv``) as a Markdown table."""
    path = run_dir / "class_iou.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    net = [k for k in rows[0] if k != "class"][-1]
    head = [names[int(r["class"])] if names else r["class"] for r in rows]
    return ["| class | " + " | ".join(head) + " |", "|---" * (len(rows) + 1) + "|",
            "| IoU % | " + " | ".join(r[net] or "-" for r in rows) + " |", ""]


def cpu_min(rec: dict) -> str:
    return f"{rec['cpu_s'] / 60:.1f}" if rec.get("cpu_s") is not None else "-"


def gain_cell(rs: list[dict], alone: dict[int, float], key: str) -> str:
    """Mean ± std over seeds of the row's ``key`` minus the student alone's, seed by seed."""
    diffs = [r[key] - alone[r["seed"]] for r in rs if r["seed"] in alone]
    if not diffs:
        return "-"
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f}"
    return f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}"


#: the weights file of a published teacher (a ``kdlab export``, see :func:`publish_teacher`)
PUBLISHED = "teacher.safetensors"


def teacher_weights(run_dir: Path) -> Path | None:
    """The teacher's weights in a run folder: its ``best.pt``, or a published teacher's
    :data:`PUBLISHED`; None when it has neither."""
    for name in ("best.pt", PUBLISHED):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def published_dir(table: Table) -> Path:
    """Where a table's teacher is kept with the results (:func:`publish_teacher`)."""
    return ROOT / "benchmarks" / "teachers" / table.dataset / table.teacher


def sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def published_line(table: Table) -> list[str]:
    """The header line naming the published teacher's weights and their sha256, if any."""
    weights = published_dir(table) / PUBLISHED
    if not weights.is_file():
        return []
    return [f"- teacher weights: `{weights.relative_to(ROOT)}` (sha256 {sha256(weights)}); "
            "every row distils from this file"]


def write_tables(args: argparse.Namespace, table: Table, teacher: dict | None,
                 recs: list[dict], runs: Path) -> Path:
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{table.dataset}_accuracy"
    m, x = table.metric, table.extra
    fields = ["row", "label", "seed", f"best_{m}", f"last_{m}", f"prev_{m}", f"last_{x}",
              "epochs_run", "wall_s", "cpu_s", "load_before", "load_after", "command"]
    everything = ([teacher] if teacher else []) + recs
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in everything:
            w.writerow(r)
    total = sum(r["wall_s"] for r in everything)
    t_dir = runs / f"teacher_{table.teacher}"
    t_cfg = run_config(t_dir)
    s_dirs = sorted(runs.glob("ce/seed*"))
    s_cfg = run_config(s_dirs[0]) if s_dirs else {}
    data = t_cfg.get("data", {})
    epochs = sorted({r["epochs_run"] for r in recs})
    lines = [
        f"# Fashion-MNIST scenes, {args.task}: every method on one footing", "",
        f"Generated by `benchmarks/dense_accuracy.py` on {time.strftime('%Y-%m-%d')}.", "",
        f"- pair: {table.teacher} (teacher) -> {table.student} (student)",
        f"- data: `{table.dataset}`, {data.get('scenes_train', '?')} generated training scenes,"
        f" {data.get('scenes_val', '?')} validation scenes (64x64; items from Fashion-MNIST's "
        "train / test splits); the recipes' augmentation",
        f"- schedule: the recipes' (batch {data.get('batch_size', '?')}, "
        f"{t_cfg.get('schedule', {}).get('name', '?')} LR from "
        f"{t_cfg.get('optim', {}).get('lr', '?')}); teacher "
        f"{t_cfg.get('schedule', {}).get('epochs', '?')} epochs (seed 0), students "
        f"{'/'.join(str(e) for e in epochs) or s_cfg.get('schedule', {}).get('epochs', '?')} "
        "epochs",
        f"- seeds: {', '.join(str(s) for s in sorted({r['seed'] for r in recs}))}; {m} and {x} "
        "in % on the validation scenes, mean ± sample std over seeds; gain = the row minus "
        "the student alone of the same seed",
        hardware_line(f", shared with other jobs (load in the CSV); {args.threads} torch "
                      "thread(s) per run, two runs side by side"),
        *published_line(table),
        f"- script command: `{args.command}`",
        f"- total wall time of the runs in this table: {total / 60:.1f} min", "",
    ]
    if teacher:
        t_curve = ", ".join(f"{v:.1f}" for v in curve(t_dir, f"val_student_{m}"))
        lines += [f"Teacher {table.teacher}: best {m} {teacher[f'best_{m}']:.2f}, last "
                  f"{teacher[f'last_{m}']:.2f}, {x} {teacher.get(f'last_{x}') or 0:.2f} "
                  f"({teacher.get('threads', 'one')} thread(s): wall "
                  f"{teacher['wall_s'] / 60:.1f} min, CPU {cpu_min(teacher)} min); per epoch: "
                  f"{t_curve}.", ""]
        lines += class_iou_lines(t_dir, SCENE_CLASSES)
    lines += [f"| row | best {m} | last {m} | gain (last {m}) | last - previous epoch | "
              f"last {x} | per seed (last {m}) | CPU min / run |",
              "|---|---|---|---|---|---|---|---|"]
    by_row: dict[str, list[dict]] = {}
    for r in recs:
        by_row.setdefault(r["row"], []).append(r)
    labels = {row.name: row.label for row in table.rows}
    alone = {r["seed"]: r[f"last_{m}"] for r in by_row.get("ce", [])}
    for name, rs in by_row.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        per = ", ".join(f"{r[f'last_{m}']:.2f}" for r in rs)
        cpu = mean_std([r["cpu_s"] / 60 for r in rs if r.get("cpu_s") is not None])
        xs = [r[f"last_{x}"] for r in rs if r.get(f"last_{x}") is not None]
        steps = [r[f"last_{m}"] - r[f"prev_{m}"] for r in rs if r.get(f"prev_{m}") is not None]
        gain = "-" if name == "ce" else gain_cell(rs, alone, f"last_{m}")
        lines.append(f"| {labels[name]} | {mean_std([r[f'best_{m}'] for r in rs])} | "
                     f"{mean_std([r[f'last_{m}'] for r in rs])} | {gain} | "
                     f"{mean_std(steps)} | {mean_std(xs)} | {per} | {cpu} |")
    lines += ["", "## Exact commands", ""]
    for r in everything:
        lines.append(command_line(r))
    lines.append("")
    notes = out / f"{stem}_notes.md"
    if notes.is_file():  # hand-written interpretation, kept across regenerations
        lines += [notes.read_text()]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


def record(cmd: list[str], run_dir: Path, info: dict, args: argparse.Namespace,
           table: Table) -> dict | None:
    column = f"val_student_{table.metric}"
    rec = run_one(cmd, run_dir, info, args.threads, column=column, metric=table.metric,
                  shared=True)
    if rec is not None and f"last_{table.extra}" not in rec:  # the companion metric
        rec[f"last_{table.extra}"] = extra_value(run_dir, f"val_student_{table.extra}")
        write_record(run_dir, rec)
    return rec


def finished(table: Table, runs: Path) -> tuple[dict | None, list[dict]]:
    """Every finished run on disk: the teacher's record and the rows' (in table order)."""
    t_rec = runs / f"teacher_{table.teacher}" / "bench_result.json"
    teacher = json.loads(t_rec.read_text()) if t_rec.is_file() else None
    names = [r.name for r in table.rows]
    done = [json.loads(f.read_text()) for f in sorted(runs.glob("*/seed*/bench_result.json"))]
    m = table.metric
    for r in done:  # records written before prev_<metric> was kept
        if f"prev_{m}" not in r:
            values = curve(runs / r["row"] / f"seed{r['seed']}", f"val_student_{m}")
            r[f"prev_{m}"] = values[-2] if len(values) > 1 else None
    recs = sorted((r for r in done if r["row"] in names),
                  key=lambda r: (names.index(r["row"]), r["seed"]))
    return teacher, recs


def _typed(row: dict[str, str], metric: str, extra: str) -> dict:
    """A results-CSV row as the run record it was written from (numbers as numbers)."""
    floats = (f"best_{metric}", f"last_{metric}", f"prev_{metric}", f"last_{extra}", "wall_s",
              "cpu_s")
    rec: dict = {k: (float(v) if v else None) if k in floats else v for k, v in row.items()}
    rec["seed"], rec["epochs_run"] = int(row["seed"]), int(row["epochs_run"])
    return rec


def restore_finished(table: Table, runs: Path, csv_path: Path) -> int:
    """Continue a table on a machine that lacks its earlier runs: every run the committed CSV
    lists and ``runs`` does not hold becomes a finished record again (``restored_from``), so
    it is neither run again nor dropped from the table; returns how many were restored.

    The rows were distilled from one teacher: where the teacher's run is on disk its curve must
    end as the CSV's teacher row does (best, last and previous epoch to 0.01), else this ends
    the benchmark, since new rows would come from another teacher. A reproduced teacher keeps
    the CSV's record (the timed run's wall and CPU time) over what the run on disk says."""
    if not csv_path.is_file():
        return 0
    with csv_path.open() as f:
        rows = [_typed(r, table.metric, table.extra) for r in csv.DictReader(f)]
    m, restored = table.metric, 0
    for rec in rows:
        rec["restored_from"] = csv_path.name
        if rec["row"] == "teacher":
            t_dir = runs / f"teacher_{table.teacher}"
            if (t_dir / "bench_result.json").is_file():
                on_disk = json.loads((t_dir / "bench_result.json").read_text())
                check_same_teacher(on_disk, rec, m, csv_path)
                write_record(t_dir, {**on_disk, **rec})  # e.g. its threads: not in the CSV
            continue
        run_dir = runs / rec["row"] / f"seed{rec['seed']}"
        if not (run_dir / "bench_result.json").is_file():
            write_record(run_dir, rec)
            restored += 1
    return restored


def check_same_teacher(on_disk: dict, in_table: dict, metric: str, csv_path: Path) -> None:
    """End the benchmark unless the teacher on disk ends as the table's teacher did."""
    keys = [f"{k}_{metric}" for k in ("best", "last", "prev")]
    if all(abs((on_disk[k] or 0) - (in_table[k] or 0)) < 0.01 for k in keys):
        return
    show = lambda r: ", ".join(f"{k} {r[k]:.2f}" for k in keys if r[k] is not None)  # noqa: E731
    raise SystemExit(f"the teacher run on disk ({show(on_disk)}) is not the teacher of "
                     f"{csv_path} ({show(in_table)}): its rows were distilled from another "
                     "teacher; give --teacher-run the run that reproduces it, or move the "
                     "table's files aside to start a new table")


def publish_teacher(t_dir: Path, dest: Path, kd: list[str]) -> None:
    """Keep the table's teacher with the results: its best weights exported once
    (``kdlab export``: weights only, a few MB) beside the run's config, metrics and per-class
    scores. A table is continued on another machine from this folder (``--teacher-run``):
    the same teacher, bit for bit, where training it again would not be (other CPUs round
    differently, and a training run amplifies it)."""
    weights = teacher_weights(t_dir)
    if weights is None:
        raise SystemExit(f"--publish-teacher: {t_dir} holds no teacher weights yet; run the "
                         "table's teacher first")
    dest.mkdir(parents=True, exist_ok=True)
    if weights.name == "best.pt":
        run_command(kd + ["export", str(t_dir), "--which", "best", "--out",
                          str(dest / PUBLISHED)], None, "export the teacher")
    else:
        shutil.copy2(weights, dest / PUBLISHED)
    for name in ("config.yaml", "metrics.csv", "class_iou.csv", "timing.json",
                 "bench_result.json"):
        if (t_dir / name).is_file():
            shutil.copy2(t_dir / name, dest / name)
    print(f"teacher published in {dest} (sha256 {sha256(dest / PUBLISHED)[:16]}...)")


def adopt_teacher(source: Path, t_dir: Path, table: Table, command: str) -> None:
    """Copy a finished ``kdlab train`` run of the table's teacher (trained elsewhere, e.g. the
    recipe's timed run) into ``t_dir`` with its record, so the table uses that teacher. Its
    wall and CPU time are its ``timing.json``'s where it has one (``teacher_timing.py``), else
    the sum of its epochs' ``epoch_seconds`` and unknown."""
    cfg = run_config(source)
    student = cfg.get("model", {}).get("student")
    dataset = cfg.get("data", {}).get("name")
    if (student, dataset) != (table.teacher, table.dataset) or teacher_weights(source) is None:
        raise SystemExit(f"--teacher-run {source}: not a finished run of {table.teacher} on "
                         f"{table.dataset} (its config says {student} on {dataset}, or it has "
                         f"no best.pt nor {PUBLISHED}); give the folder of a finished teacher "
                         "run or of a published teacher (--publish-teacher)")
    rows = read_metrics(source)
    column = f"val_student_{table.metric}"
    values = [float(r[column]) for r in rows if r.get(column)]
    shutil.copytree(source, t_dir)
    threads = sorted({r["cpu_threads"] for r in rows if r.get("cpu_threads")})
    rec = {"row": "teacher", "label": f"teacher {table.teacher}", "seed": 0,
           "command": command, "epochs_run": len(values), "cpu_s": None,
           "wall_s": sum(float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")),
           "threads": "/".join(threads) or "?", "load_before": None, "load_after": None,
           f"best_{table.metric}": max(values), f"last_{table.metric}": values[-1],
           f"prev_{table.metric}": values[-2] if len(values) > 1 else None,
           f"last_{table.extra}": extra_value(source, f"val_student_{table.extra}")}
    timed = source / "timing.json"  # benchmarks/teacher_timing.py's record, start to report
    if timed.is_file():
        rec.update({k: v for k, v in json.loads(timed.read_text()).items()
                    if k in ("wall_s", "cpu_s", "load_before", "load_after")})
    write_record(t_dir, rec)


def teacher_run(args: argparse.Namespace, table: Table, kd: list[str], runs: Path) -> dict:
    """The teacher's record: adopted from ``--teacher-run``, trained here unless finished, or
    waited for while another process trains it."""
    t_dir = runs / f"teacher_{table.teacher}"
    if args.teacher_run and not (t_dir / "bench_result.json").is_file():
        adopt_teacher(Path(args.teacher_run), t_dir, table, args.teacher_command)
    t_recipe = Path("recipes") / table.dataset / "ce" / f"{table.teacher}.yaml"
    t_cmd = kd + ["train", str(t_recipe),
                  *sets(common_overrides(args, args.teacher_epochs, 0)), "--out", str(t_dir)]
    while True:
        rec = record(t_cmd, t_dir, {"row": "teacher", "label": f"teacher {table.teacher}",
                                    "seed": 0}, args, table)
        if rec is not None:
            return rec
        time.sleep(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TABLES), default="segmentation")
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="students (default: the recipes')")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="the teacher (default: its recipe's)")
    p.add_argument("--teacher-run", default=None,
                   help="use this finished `kdlab train` run of the teacher instead of "
                        "training one (copied into the table's runs)")
    p.add_argument("--teacher-command", default="(adopted with --teacher-run)",
                   help="the command that trained --teacher-run, for the table")
    p.add_argument("--publish-teacher", action="store_true",
                   help="also keep the teacher's weights, config and metrics in "
                        "benchmarks/teachers/<dataset>/<teacher> (committed: --teacher-run "
                        "with that folder continues the table on another machine)")
    p.add_argument("--teacher-only", action="store_true",
                   help="train (or adopt) the teacher, publish it if asked, write the table, "
                        "and stop before the rows")
    p.add_argument("--scenes-train", type=int, default=None, help="default: the recipes'")
    p.add_argument("--scenes-val", type=int, default=None, help="default: the recipes'")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/bench", help="relative to the repository root")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    args.command = ("python benchmarks/dense_accuracy.py " + shlex.join(argv)).strip()
    table = TABLES[args.task]
    known = {r.name for r in table.rows}
    wanted = set(args.rows.split(",")) if args.rows else known
    if wanted - known:
        raise SystemExit(f"unknown rows {sorted(wanted - known)}; known: {sorted(known)}")
    rows = [r for r in table.rows if r.name in wanted]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs) / f"{table.dataset}_accuracy"
    os.chdir(ROOT)
    committed = Path(args.results) / f"{table.dataset}_accuracy.csv"
    kd = kdlab_cmd()
    t_dir = runs / f"teacher_{table.teacher}"
    if not args.report_only:  # the teacher first: restoring checks it is the table's
        teacher_run(args, table, kd, runs)
        if args.publish_teacher:
            publish_teacher(t_dir, published_dir(table), kd)
    if n := restore_finished(table, runs, committed):
        print(f"{n} finished run(s) read back from {committed}", flush=True)
    if not (args.report_only or args.teacher_only):
        ckpt = teacher_weights(t_dir)
        for seed in seeds:
            for row in rows:
                alone = row.recipe_dir == "ce"
                values = [] if alone else [f"model.teacher_checkpoint={ckpt}"]
                values += list(row.overrides) + common_overrides(args, args.epochs, seed)
                r_dir = runs / row.name / f"seed{seed}"
                cmd = kd + ["train" if alone else "distill", str(recipe(table, row)),
                            *sets(values), "--out", str(r_dir)]
                if record(cmd, r_dir, {"row": row.name, "label": row.label, "seed": seed},
                          args, table) is not None:
                    write_tables(args, table, *finished(table, runs), runs)
    print(f"written to {write_tables(args, table, *finished(table, runs), runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the scenes teachers' recipes as a user runs them, and write their per-epoch curves
(issue 21, item 3: each teacher within 20 minutes on 2 cores; the detection teacher at or
above 50 COCO mAP, the segmentation teacher at a plateau: its last two epochs within 0.5 mIoU).

Each recipe runs once with ``kdlab train <recipe>`` and kdlab's thread policy (``train.threads:
auto``; ``OMP_NUM_THREADS`` is removed from the environment), one after the other. Take the
machine for yourself while it runs (no other training or test). The wall time is from the
command's start to its end (the report included), the CPU time is the command's user + system
time. A finished run (its ``timing.json``) is not run again; ``--report-only`` rewrites the file
from the runs on disk (and appends ``<out stem>_notes.md``, hand-written context, if present).

    python benchmarks/teacher_timing.py [--out benchmarks/results/scenes_teachers_timed.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from protocol import ROOT, hardware_line, kdlab_cmd, load, read_metrics

from kdlab.data.scene_sets import SCENE_CLASSES

#: (recipe, run folder, primary metric, second metric)
TEACHERS = (
    ("recipes/scenes_det/ce/frcnn_tiny_r18.yaml", "runs/scenes_det/ce/frcnn_tiny_r18",
     "map", "ap50"),
    ("recipes/scenes_seg/ce/seg_resnet20.yaml", "runs/scenes_seg/ce/seg_resnet20",
     "miou", "pixel_acc"),
)
BUDGET_MIN = 20.0
PLATEAU = 0.5


def timed_run(recipe: str, run_dir: Path) -> dict:
    """Run ``kdlab train recipe`` into ``run_dir`` (unless finished) and return its record."""
    done = run_dir / "timing.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = kdlab_cmd() + ["train", recipe, "--set", "train.progress=none",
                         "--set", f"train.out_dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before = load()
    print(f"[{time.strftime('%H:%M:%S')}] {shlex.join(cmd)}", flush=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rec = {"recipe": recipe, "command": shlex.join(["kdlab", *cmd[len(kdlab_cmd()):]]),
           "wall_s": round(wall, 1),
           "cpu_s": round(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime, 1),
           "load_before": before, "load_after": load(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    done.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def verdict(metric: str, values: list[float], wall_s: float) -> str:
    """Whether a teacher meets issue 21's bar, in words."""
    in_time = wall_s / 60 <= BUDGET_MIN
    if metric == "map":
        ok = values[-1] >= 50.0
        what = f"{values[-1]:.2f} mAP {'>=' if ok else '<'} 50"
    else:
        step = abs(values[-1] - values[-2])
        ok = step <= PLATEAU
        what = f"last two epochs {step:.2f} apart ({'<=' if ok else '>'} {PLATEAU})"
    return (f"{what}; {wall_s / 60:.1f} min {'<=' if in_time else '>'} {BUDGET_MIN:.0f} min: "
            f"{'meets' if ok and in_time else 'misses'} the bar")


def section(recipe: str, run_dir: Path, metric: str, extra: str) -> list[str]:
    rec = json.loads((run_dir / "timing.json").read_text())
    rows = read_metrics(run_dir)
    values = [float(r[f"val_student_{metric}"]) for r in rows]
    lines = [f"## `{rec['command']}`", "",
             f"- {rec['date']}; wall {rec['wall_s'] / 60:.1f} min, CPU {rec['cpu_s'] / 60:.1f} "
             f"min; load (1/5/15 min) {rec['load_before']} before, {rec['load_after']} after",
             f"- {verdict(metric, values, rec['wall_s'])}", "",
             f"| epoch | val {metric} % | val {extra} % | threads | epoch s (training) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['epoch']} | {float(r[f'val_student_{metric}']):.2f} | "
                     f"{float(r[f'val_student_{extra}']):.2f} | {r.get('cpu_threads', '-')} | "
                     f"{float(r['epoch_seconds']):.0f} |")
    iou = run_dir / "class_iou.csv"
    if iou.is_file():
        with iou.open() as f:
            per = list(csv.DictReader(f))
        net = [k for k in per[0] if k != "class"][-1]
        lines += ["", "Per-class IoU % after the last epoch:", "",
                  "| " + " | ".join(SCENE_CLASSES[int(r["class"])] for r in per) + " |",
                  "|---" * len(per) + "|", "| " + " | ".join(r[net] for r in per) + " |"]
    return lines + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scenes_teachers_timed.md"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    os.chdir(ROOT)
    if not args.report_only:
        for recipe, run_dir, _, _ in TEACHERS:
            timed_run(recipe, Path(run_dir))
    lines = ["# Scenes teachers: the recipes as a user runs them, timed (issue 21)", "",
             "Generated by `python benchmarks/teacher_timing.py`: one run per recipe, seed 0, "
             "kdlab's thread policy (`train.threads: auto`), one after the other, no other job "
             "on the machine's CPU lock.",
             hardware_line(""), ""]
    for recipe, run_dir, metric, extra in TEACHERS:
        if (Path(run_dir) / "timing.json").is_file():
            lines += section(recipe, Path(run_dir), metric, extra)
    notes = Path(args.out).with_name(Path(args.out).stem + "_notes.md")
    if notes.is_file():  # hand-written context, kept across regenerations
        lines += [notes.read_text()]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One real ``kdlab tune`` search on Fashion-MNIST: FCFD's L2 weight, KL weight and temperature
for the quickstart's pair (resnet20 -> resnet8) and data budget, then the best recipe against
the shipped defaults at three fresh seeds.

The quickstart's settings (:mod:`kdlab.tools.quickstart`): a resnet20 teacher trained 6 epochs, the
student 3 epochs on the first 20,000 training images, batch 64, LR 0.05 falling linearly to
zero, FCFD with |S| = 2 paths and a 1-epoch L2 warm-up. The search draws

- ``method.temperature`` in [1, 8] (log),
- ``method.app_weight+method.func_l2_weight`` in [0.005, 10] (log; the paper ties L_app's and
  L_func's L2 weights),
- ``method.func_kl_weight+method.funcp_kl_weight`` in [0.05, 5] (log; the paper ties the KL
  weights of L_func and L_func'),

with TPE and the median pruner from epoch 1. Two ``kdlab tune`` processes share the study
(its SQLite file), one thread each: that is the scale-out of docs/tune.md on one machine.
The best recipe and the defaults (T = 4, L2 0.02, KL 1) are then trained at seeds 1, 2, 3,
which the search (seed 0) never used, and compared seed by seed.

Steps, from the repository root; each is resumable:

    python benchmarks/tune_fashion_mnist.py prepare              # teacher + the FCFD recipe
    python benchmarks/tune_fashion_mnist.py search --seed 1 &    # process 1 of the study
    python benchmarks/tune_fashion_mnist.py search --seed 2      # process 2 of the study
    python benchmarks/tune_fashion_mnist.py rerun --lane 0 &     # best and defaults, seeds
    python benchmarks/tune_fashion_mnist.py rerun --lane 1       #   1-3, in two lanes
    python benchmarks/tune_fashion_mnist.py report               # results/tune.md, tune/
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ROOT, hardware_line, kdlab_cmd, load, mean_std, run_one  # noqa: E402

RUNS = Path("runs/bench/tune")  # relative to ROOT
RESULTS = ROOT / "benchmarks" / "results"
SPACE = ("method.temperature=1:8:log",
         "method.app_weight+method.func_l2_weight=0.005:10:log",
         "method.func_kl_weight+method.funcp_kl_weight=0.05:5:log")
TRIALS, EPOCHS, SEEDS = 24, 3, (1, 2, 3)
SEARCH = RUNS / "search"


def quickstart_configs() -> dict:
    from kdlab.tools.quickstart import QuickstartSettings, run_configs

    return run_configs(QuickstartSettings(out=str(RUNS / "quickstart"), progress="none"))


def write_recipe(cfg, path: Path, header: str) -> Path:
    tree = cfg.to_dict()
    tree["train"]["threads"] = 1
    (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / path).write_text(header + yaml.safe_dump(tree, sort_keys=False))
    return path


def prepare(_: argparse.Namespace) -> None:
    cfgs = quickstart_configs()
    teacher = write_recipe(cfgs["teacher"], RUNS / "teacher.yaml",
                           "# the quickstart's teacher (kdlab.tools.quickstart), one thread\n")
    out = Path(cfgs["teacher"].train.out_dir)
    run_one([*kdlab_cmd(), "train", str(teacher)], ROOT / out,
            {"row": "teacher", "seed": 0}, threads=1)
    write_recipe(cfgs["fcfd"], RUNS / "fcfd.yaml",
                 "# the quickstart's FCFD run (kdlab.tools.quickstart), one thread: the shipped "
                 "defaults\n")
    print(f"recipe {RUNS / 'fcfd.yaml'}")


def search_command(seed: int) -> list[str]:
    cmd = [*kdlab_cmd(), "tune", str(RUNS / "fcfd.yaml"), "--trials", str(TRIALS),
           "--epochs", str(EPOCHS), "--out", str(SEARCH), "--seed", str(seed)]
    for space in SPACE:
        cmd += ["--space", space]
    return cmd


def search(args: argparse.Namespace) -> None:
    cmd = search_command(args.seed)
    log = ROOT / RUNS / f"search-process{args.seed}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)} > {log}", flush=True)
    with log.open("a") as f:
        f.write(f"# {' '.join(cmd)}\n# load before: {load()}\n")
        f.flush()
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        f.write(f"# exit {code}, load after: {load()}\n")
    if code:
        raise SystemExit(f"the search process ended with {code}; see {log}")


def reruns() -> list[tuple[str, Path, int]]:
    return [(which, recipe, seed) for which, recipe in (("best", SEARCH / "best.yaml"),
                                                        ("defaults", RUNS / "fcfd.yaml"))
            for seed in SEEDS]


def rerun(args: argparse.Namespace) -> None:
    for i, (which, recipe, seed) in enumerate(reruns()):
        if i % 2 != args.lane:
            continue
        out = RUNS / "rerun" / f"{which}-seed{seed}"
        run_one([*kdlab_cmd(), "distill", str(recipe), "--set", f"train.seed={seed}",
                 "--out", str(out)], ROOT / out, {"row": which, "seed": seed}, threads=1)


# --------------------------------------------------------------------- the report
def read_trials() -> list[dict[str, str]]:
    with (ROOT / SEARCH / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def searched_values(recipe: Path) -> dict[str, float]:
    """The searched settings of a recipe (FCFD's defaults where it does not set them)."""
    import dataclasses

    from kdlab.methods import METHODS

    method = {**dataclasses.asdict(METHODS.get("fcfd").Config()),
              **yaml.safe_load((ROOT / recipe).read_text())["method"]}
    return {"T": method["temperature"], "L2": method["app_weight"],
            "KL": method["func_kl_weight"]}


def report(_: argparse.Namespace) -> None:
    trials = read_trials()
    records = {(w, s): json.loads((ROOT / RUNS / "rerun" / f"{w}-seed{s}" /
                                   "bench_result.json").read_text())
               for w, _, s in reruns()}
    best = {s: records[("best", s)]["best_top1"] for s in SEEDS}
    default = {s: records[("defaults", s)]["best_top1"] for s in SEEDS}
    gains = [best[s] - default[s] for s in SEEDS]
    states = {k: sum(t["state"] == k for t in trials) for k in ("complete", "pruned", "fail")}
    processes = sorted({t["process"] for t in trials if t.get("process")})
    per_process = {p: sum(t["process"] == p for t in trials) for p in processes}
    out = RESULTS / "tune"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("history.png", "importance.png", "parallel.png", "intermediate.png",
                 "trials.csv", "best.yaml"):
        shutil.copy(ROOT / SEARCH / name, out / name)
    shutil.copy(ROOT / RUNS / "fcfd.yaml", out / "defaults.yaml")
    table = (ROOT / SEARCH / "trials.md").read_text().split("\n| trial")[1].split("\n\n")[0]
    bv, dv = searched_values(SEARCH / "best.yaml"), searched_values(RUNS / "fcfd.yaml")
    seconds = [float(t["seconds"]) for t in trials if t["seconds"]]
    tune_logs = sorted((ROOT / RUNS).glob("search-process*.log"))
    lines = [
        "# `kdlab tune` on Fashion-MNIST: FCFD's weights and temperature, resnet20 -> resnet8",
        "",
        f"Generated by `benchmarks/tune_fashion_mnist.py` on {time.strftime('%Y-%m-%d')}; "
        "top-1 (%) on the 10,000 Fashion-MNIST test images (best epoch, which with the "
        "linear-to-zero LR is the last one).",
        "",
        "- protocol: the quickstart's pair and budget (`kdlab.tools.quickstart`): resnet20 teacher "
        "trained 6 epochs, resnet8 student 3 epochs on the first 20,000 training images, batch "
        "64, SGD LR 0.05 falling linearly to zero, FCFD |S| = 2, L2 warm-up 1 epoch",
        "- search: " + ", ".join(f"`{s}`" for s in SPACE) + f"; {TRIALS} trials of {EPOCHS} "
        "epochs at seed 0, TPE (multivariate, constant liar), median pruner from epoch 1",
        f"- scale-out: {len(processes)} `kdlab tune` processes on one SQLite study, one thread "
        "each (trials per process: " + ", ".join(str(n) for n in per_process.values()) + ")",
        hardware_line(", 1 thread per run, two runs at a time"),
        f"- trials: {states['complete']} complete, {states['pruned']} pruned, {states['fail']} "
        f"failed; {sum(seconds) / 60:.0f} min of training over both processes",
        "",
        "## The search",
        "",
        "| trial" + table,
        "",
        "![optimisation history](tune/history.png)",
        "![parameter importances](tune/importance.png)",
        "![parallel coordinates](tune/parallel.png)",
        "![per-epoch scores, pruned trials stop early](tune/intermediate.png)",
        "",
        "## The best recipe against the shipped defaults, at seeds the search did not use",
        "",
        f"- best (`tune/best.yaml`): T = {bv['T']:.3g}, L2 weight = {bv['L2']:.3g}, "
        f"KL weight = {bv['KL']:.3g}",
        f"- defaults (`tune/defaults.yaml`, the quickstart's FCFD): T = {dv['T']:g}, "
        f"L2 weight = {dv['L2']:g}, KL weight = {dv['KL']:g}",
        "",
        "| seed | best | defaults | best - defaults |",
        "|---|---:|---:|---:|",
        *(f"| {s} | {best[s]:.2f} | {default[s]:.2f} | {best[s] - default[s]:+.2f} |"
          for s in SEEDS),
        f"| mean ± std | {mean_std(list(best.values()))} | {mean_std(list(default.values()))} "
        f"| {mean_std(gains)} |",
        "",
        f"Paired gain {statistics.fmean(gains):+.2f} ± {statistics.stdev(gains):.2f} points "
        f"(mean / std {statistics.fmean(gains) / statistics.stdev(gains):.1f}).",
        "",
        "Commands:",
        "",
        *(f"- `{' '.join(search_command(s))}` (process {s})" for s in (1, 2)),
        *(f"- `{records[(w, s)]['command']}`" for w, _, s in reruns()),
        "",
        "Logs of the two search processes: " + ", ".join(f"`{RUNS / p.name}`"
                                                        for p in tune_logs) + ".",
        "",
    ]
    (RESULTS / "tune.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'tune.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare").set_defaults(run=prepare)
    p = sub.add_parser("search")
    p.add_argument("--seed", type=int, required=True, help="this process's sampler seed")
    p.set_defaults(run=search)
    p = sub.add_parser("rerun")
    p.add_argument("--lane", type=int, choices=(0, 1), required=True)
    p.set_defaults(run=rerun)
    sub.add_parser("report").set_defaults(run=report)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

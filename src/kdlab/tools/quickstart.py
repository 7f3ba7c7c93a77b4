"""The README's main job: a teacher, the student alone, with KD and with FCFD, compared.

On Fashion-MNIST it trains a small teacher with cross-entropy, the student alone with
cross-entropy, the student with Hinton KD (Hinton et al., 2015) and the student with FCFD
(Liu et al., ICLR 2023: L_app + L_func + L_func' with |S| = 2 sampled paths) from that
teacher, then prints top-1 and wall time of each and saves a bar plot (``quickstart.png``).
The settings are cut down (few epochs, a training subset) so that the whole job finishes in
about 10 minutes on 2 idle CPU cores: the teacher trains twice as long as the students, so that it
is well ahead of them, and every run's LR falls linearly to zero, so that a short run ends
settled. The recipes under ``recipes/`` hold the full-length settings.

Re-running with the same out dir reuses finished runs whose settings match, resumes an
interrupted one and starts afresh (with a note) where the settings changed.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write_text

MARKER = "quickstart.json"


@dataclass
class QuickstartSettings:
    """What ``kdlab quickstart`` trains. The defaults were chosen by a 3-seed search
    (benchmarks/results/quickstart_search.md) and fit 10 minutes on 2 CPU cores."""

    out: str = "runs/quickstart"
    teacher: str = "resnet20"
    student: str = "resnet8"
    epochs: int = 3  # of each student run
    teacher_epochs: int = 6  # the teacher trains longer, so that it is well ahead of the student
    train_subset: int | None = 20_000
    batch_size: int = 64
    lr: float = 0.05
    temperature: float = 4.0
    l2_weight: float = 0.02  # FCFD's L_app / L_func-L2 weight (the paper's same-family value)
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    device: str = "auto"
    seed: int = 0
    max_steps_per_epoch: int | None = None
    progress: str = "auto"
    fresh: bool = False


def run_configs(s: QuickstartSettings) -> dict[str, RunConfig]:
    """The four runs: teacher (ce), student alone (ce), student with KD and with FCFD from
    the teacher."""
    out = Path(s.out)

    def make(name: str, model: dict[str, Any], method: dict[str, Any],
             epochs: int = s.epochs) -> RunConfig:
        tree = {
            "data": {"name": s.dataset, "root": s.data_root, "batch_size": s.batch_size,
                     "train_subset": s.train_subset},
            "model": model,
            "method": method,
            "optim": {"lr": s.lr},
            # the LR falls linearly to zero over the run's iterations: short runs end settled
            # instead of on the noisy last epoch of a step or per-epoch cosine schedule
            "schedule": {"name": "poly", "power": 1.0, "epochs": epochs},
            "train": {"seed": s.seed, "device": s.device, "out_dir": str(out / name),
                      "max_steps_per_epoch": s.max_steps_per_epoch, "progress": s.progress},
        }
        return build_dataclass(RunConfig, tree, where="quickstart")

    distil = {"student": s.student, "teacher": s.teacher,
              "teacher_checkpoint": str(out / "teacher" / "best.pt")}
    return {
        "teacher": make("teacher", {"student": s.teacher}, {"name": "ce"}, s.teacher_epochs),
        "student": make("student", {"student": s.student}, {"name": "ce"}),
        # the settings benchmarks/results/quickstart_seeds.md was measured with (kdlab's
        # defaults then; the methods' defaults are now the reference code's)
        "kd": make("kd", distil, {"name": "kd", "temperature": s.temperature,
                                  "ce_weight": 1.0, "kd_weight": 1.0}),
        "fcfd": make("fcfd", distil, {
            "name": "fcfd", "temperature": s.temperature, "app_weight": s.l2_weight,
            "func_l2_weight": s.l2_weight, "num_paths": 2, "l2_warmup_epochs": 1,
            "teacher_bn": "eval", "bridge_init": "kaiming"}),
    }


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["train"].pop("progress", None)  # how progress is shown does not change the result
    return d


def _train_or_reuse(name: str, cfg: RunConfig, fresh: bool,
                    depends: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run, or reuse / resume it when its folder holds the same settings (and
    was trained from the same ``depends``: the teacher run's summary for KD)."""
    from kdlab.training.trainer import Trainer

    folder = Path(cfg.train.out_dir)
    marker = folder / MARKER
    wanted = _comparable(cfg) | {"depends": depends or {}}
    resume = False
    if folder.exists() and any(folder.iterdir()):
        previous = None
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())
            except json.JSONDecodeError:
                previous = None
        if not fresh and previous and previous.get("config") == wanted and "summary" in previous:
            print(f"  reusing the finished run in {folder} (same settings; --fresh retrains)")
            return previous["summary"] | {"reused": True}
        if not fresh and previous and previous.get("config") == wanted \
                and (folder / "last.pt").is_file():
            print(f"  resuming the interrupted run in {folder}")
            resume = True
        elif not (folder / MARKER).is_file() and not (folder / "config.yaml").is_file():
            raise UserError(f"{str(folder)!r} exists and is not a quickstart run; choose "
                            "another --out or delete that folder.")
        else:
            why = "--fresh" if fresh else "its settings differ"
            print(f"  {folder} holds an earlier run ({why}): starting it afresh")
            shutil.rmtree(folder)
    start = time.perf_counter()
    summary = dict(Trainer(cfg, resume=resume).fit())
    summary["wall_seconds"] = time.perf_counter() - start
    summary = json.loads(json.dumps(summary, default=str))
    atomic_write_text(marker, json.dumps({"config": wanted, "summary": summary}, indent=2))
    return summary


def _top1(summary: dict[str, Any]) -> float:
    return float(summary.get("best_top1", float("nan")))


def quickstart(s: QuickstartSettings) -> dict[str, dict[str, Any]]:
    """Train (or reuse) the four runs, print the comparison table, return the summaries."""
    if s.epochs < 1 or s.teacher_epochs < 1:
        raise UserError("--epochs and --teacher-epochs must be at least 1.")
    cfgs = run_configs(s)
    titles = {
        "teacher": f"teacher {s.teacher} (cross-entropy, {s.teacher_epochs} epochs)",
        "student": f"student {s.student} alone (cross-entropy)",
        "kd": f"student {s.student} + KD from the teacher (T={s.temperature:g})",
        "fcfd": f"student {s.student} + FCFD from the teacher (|S|=2)",
    }
    subset = f"first {s.train_subset} training images" if s.train_subset else "all training images"
    print(f"kdlab quickstart: {s.dataset}, teacher {s.teacher_epochs} epochs, students "
          f"{s.epochs} epochs each, {subset}, batch {s.batch_size}, seed {s.seed}; runs in "
          f"{s.out}")
    started = time.perf_counter()
    summaries: dict[str, dict[str, Any]] = {}
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        print(f"[{i}/{len(cfgs)}] {titles[name]}", flush=True)
        depends = ({k: v for k, v in summaries["teacher"].items() if k != "reused"}
                   if name != "teacher" and cfgs[name].model.teacher else None)
        summaries[name] = _train_or_reuse(name, cfg, s.fresh, depends)
        print(f"  top-1 {_top1(summaries[name]):.2f}  "
              f"({summaries[name].get('wall_seconds', 0):.0f} s)", flush=True)
    total = time.perf_counter() - started
    print()
    print(format_table(summaries, titles))
    print(noise_line(summaries, s))
    plot = plot_bars(summaries, titles, Path(s.out) / "quickstart.png")
    print(f"\ntotal {total:.0f} s on this machine; bar plot {plot}"
          + (" (some runs reused)" if any(v.get("reused") for v in summaries.values()) else ""))
    print("These are short runs. Full-length training uses the recipes, e.g.\n"
          f"  kdlab train recipes/{s.dataset}/ce/{s.teacher}.yaml\n"
          f"  kdlab distill recipes/{s.dataset}/kd/{s.student}_from_{s.teacher}.yaml\n"
          f"  kdlab distill recipes/{s.dataset}/fcfd/{s.student}_from_{s.teacher}.yaml\n"
          "(`kdlab list methods` shows every method; benchmarks/README.md compares them).")
    return summaries


#: the default settings' paired gains (points of top-1, same seed and teacher) over seeds:
#: (mean, sample std); measured by benchmarks/quickstart_seeds.py, table in
#: benchmarks/results/quickstart_seeds.md
MEASURED_SEEDS = 3
MEASURED_GAINS: dict[str, tuple[float, float]] = {
    "KD - alone": (2.82, 0.39), "FCFD - alone": (2.65, 0.64), "FCFD - KD": (-0.17, 0.46)}
#: settings that do not change what the runs compute
NEUTRAL_SETTINGS = {"out", "data_root", "device", "progress", "fresh", "seed"}


def _at_defaults(s: QuickstartSettings) -> bool:
    default = QuickstartSettings()
    return all(getattr(s, f.name) == getattr(default, f.name)
               for f in fields(QuickstartSettings) if f.name not in NEUTRAL_SETTINGS)


def _distance(mean: float, std: float) -> str:
    z = abs(mean) / std
    return f"{z:.1f} std from zero" + (", within noise" if z < 2 else "")


def noise_line(summaries: dict[str, dict[str, Any]], s: QuickstartSettings) -> str:
    """One line: this job's gains over the student alone and how far from seed noise the
    default settings' gains are."""
    alone = _top1(summaries["student"])
    here = (f"Gains over the student alone in this job: KD "
            f"{_top1(summaries['kd']) - alone:+.2f}, FCFD {_top1(summaries['fcfd']) - alone:+.2f}"
            " points")
    if not _at_defaults(s):
        return (here + "; the seed-to-seed spread is measured for the default settings only "
                "(benchmarks/quickstart_seeds.py measures yours).")
    spread = ", ".join(f"{label} {m:+.2f} ± {sd:.2f} ({_distance(m, sd)})"
                       for label, (m, sd) in MEASURED_GAINS.items())
    return f"{here}; over {MEASURED_SEEDS} seeds these settings gave {spread}."


def plot_bars(summaries: dict[str, dict[str, Any]], titles: dict[str, str], path: Path) -> Path:
    """A bar chart of the runs' top-1, written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdlab.runtime.files import atomic_write

    names = list(summaries)
    values = [_top1(summaries[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bars = ax.barh([titles[n] for n in names][::-1], values[::-1], color="#4878a8")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    finite = [v for v in values if v == v] or [0.0, 100.0]
    ax.set_xlim(max(0.0, min(finite) - 5.0), min(100.0, max(finite) + 4.0))
    ax.set_xlabel("validation top-1 (%)")
    ax.set_title("kdlab quickstart")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def format_table(summaries: dict[str, dict[str, Any]], titles: dict[str, str]) -> str:
    width = max(len(t) for t in titles.values())
    lines = [f"{'run':<{width}}  {'top-1 %':>8}  {'wall time':>10}"]
    for name, summary in summaries.items():
        wall = summary.get("wall_seconds", summary.get("seconds", float("nan")))
        lines.append(f"{titles[name]:<{width}}  {_top1(summary):>8.2f}  {wall:>8.0f} s")
    return "\n".join(lines)

"""``kdlab profile RUN [RUN ...]``: how much smaller and faster each student is than its
teacher, on this machine, for the score it gives up.

Every network a run exports is profiled (:mod:`kdlab.tools.deploy.profile`), and so is the teacher
a distillation run names in ``model.teacher_checkpoint``: that checkpoint's own run when it
lies in a run folder (its score then comes from that run), else the network rebuilt from
the checkpoint or ``.safetensors`` file (no score). A teacher given as a RUN too is profiled
once. The table (Markdown) is printed; ``--out DIR`` also writes ``profile.md``,
``profile.csv``, ``profile.png`` (score vs latency, Pareto front marked) and the verified
ONNX files the onnxruntime columns time (``DIR/onnx/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from kdlab.cli.commands.common import WHICH, Restored, restore_run
from kdlab.cli.commands.evaluate import network_label
from kdlab.errors import UserError


def add_parser(sub: Any) -> None:
    text = ("the compression report: parameters, GFLOP, activation memory, latency (eager and "
            "onnxruntime), size and score of teachers and students; table, CSV and plot")
    p = sub.add_parser("profile", help=text, description=text + ". A distillation run brings "
                       "its teacher (model.teacher_checkpoint) along; each network's ONNX file "
                       "is verified against PyTorch before onnxruntime times it.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (distillations bring "
                   "their teacher along)")
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint of each run")
    p.add_argument("--out", metavar="DIR",
                   help="write profile.md, profile.csv, profile.png and onnx/ into DIR")
    p.add_argument("--batch", type=int, default=32, help="the throughput batch (default 32)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed calls per round (default 10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds in which the networks take turns; a latency is the median "
                   "of its timed calls over every round (default 3)")
    p.add_argument("--threads", default="auto",
                   help="intra-op threads of PyTorch and onnxruntime, fixed for the whole "
                   "measurement: auto (the cores of this process, one fewer per core other "
                   "processes keep busy at the start, or OMP_NUM_THREADS) or a number")
    p.add_argument("--no-onnx", action="store_true",
                   help="no ONNX export and no onnxruntime columns")
    p.add_argument("--no-timing", action="store_true",
                   help="counts only (parameters, GFLOP, memory, size, score): no latency")
    p.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="the ONNX check's tolerance (see kdlab export; default 1e-4)")
    p.set_defaults(run=run)


# --------------------------------------------------------------------- the networks
def _label(path: Path, taken: set[str]) -> str:
    """A short, unused name for a checkpoint: its run folder's name (with the parent folder
    when that is taken) or, for a file outside a run folder, the file's stem."""
    folder = path.parent
    if (folder / "config.yaml").is_file():
        names = [folder.name, f"{folder.parent.name}/{folder.name}", str(folder)]
    else:
        names = [path.stem, str(path)]
    return next((n for n in names if n and n not in taken), str(path))


def _subject(r: Restored, net: Any, *, label: str, name: str, model: str,
             images: list[Any], score: Any) -> Any:
    """A :class:`~kdlab.tools.deploy.profile.Subject` for network ``net`` of run ``r``'s task."""
    from kdlab.tools.deploy.profile import Subject
    from kdlab.tools.deploy.write import deploy_metadata

    task = r.distiller.task
    spec = task.deploy(net.eval(), tuple(images[0].shape))
    return Subject(
        label=label, role="student", model=model, task=task.name, spec=spec, images=images,
        metric=task.primary, score=float(score) if isinstance(score, (int, float)) else None,
        metadata=deploy_metadata(spec, "onnx", name=name, model=model, task=task.name,
                                 info=r.info),
        run=str(r.ckpt_path))


def _subjects(r: Restored, label: str, images_count: int) -> list[Any]:
    """One subject per network the run exports, scored at the checkpoint's epoch."""
    from kdlab.tools.deploy.verify import validation_images

    images = validation_images(r.val, images_count)
    exported = r.distiller.exported()
    row = r.history[-1] if r.history else {}
    return [_subject(r, net, label=label if len(exported) == 1 else f"{label}/{name}",
                     name=name, model=network_label(net, r.cfg), images=images,
                     score=row.get(f"val_{name}_{r.distiller.task.primary}"))
            for name, net in exported.items()]


def _teacher_path(r: Restored) -> Path | None:
    """The resolved teacher checkpoint of a distillation run, or None (no teacher, or the
    file is not here: a note says so)."""
    from kdlab.methods import METHODS

    m = r.cfg.model
    if not (m.teacher and m.teacher_checkpoint and METHODS.get(r.cfg.method_name).needs_teacher):
        return None
    path = Path(m.teacher_checkpoint)
    if not path.is_file():
        print(f"note: the teacher checkpoint {str(path)!r} of {str(r.ckpt_path)!r} is not "
              "here (run kdlab profile from where the run was trained, or give the teacher's "
              "run folder); its row is left out.")
        return None
    return path.resolve()


def _teacher_subjects(r: Restored, path: Path, label: str, images_count: int) -> list[Any]:
    """The teacher at ``path``: its own run when it has one (scored there), else the network
    rebuilt from the file (no score)."""
    if (path.parent / "config.yaml").is_file() and path.suffix == ".pt":
        return _subjects(restore_run(path, "best", [], device="cpu"), label, images_count)
    from kdlab.tools.deploy.verify import validation_images
    from kdlab.training.build import build_teacher

    teacher = build_teacher(r.cfg, r.info).net
    return [_subject(r, teacher, label=label, name="teacher", model=str(r.cfg.model.teacher),
                     images=validation_images(r.val, images_count), score=None)]


def gather(paths: list[str], which: str, images_count: int) -> list[Any]:
    """Every network to profile: the teachers first, then the runs' networks in order."""
    entries: dict[Path, list[Any]] = {}
    teachers: list[Path] = []
    taken: set[str] = set()
    for path in paths:
        r = restore_run(path, which, [], device="cpu")
        key = r.ckpt_path.resolve()
        if key not in entries:
            label = _label(r.ckpt_path, taken)
            taken.add(label)
            entries[key] = _subjects(r, label, images_count)
        t = _teacher_path(r)
        if t is None:
            continue
        if t not in entries:
            label = _label(t, taken)
            taken.add(label)
            entries[t] = _teacher_subjects(r, t, label, images_count)
        if t not in teachers:
            teachers.append(t)
        for s in entries[key]:
            s.teacher = entries[t][0].label
    for t in teachers:
        for s in entries[t]:
            s.role = "teacher"
    order = teachers + [k for k in entries if k not in teachers]
    return [s for key in order for s in entries[key]]


# --------------------------------------------------------------------- the report
def _versions() -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "onnx"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            pass
    from kdlab.core.version import __version__

    return ", ".join(parts + [f"kdlab {__version__}", f"Python {platform.python_version()}"])


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(args: argparse.Namespace, threads: str, onnx: bool) -> dict[str, Any]:
    import torch

    from kdlab.tools.bench.bench import cpu_name

    options = (f" --which {args.which} --batch {args.batch} --warmup {args.warmup} "
               f"--repeats {args.repeats} --rounds {args.rounds} --threads {args.threads}"
               + (" --no-onnx" if args.no_onnx else "") + (" --no-timing" if args.no_timing
                                                            else ""))
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "kdlab profile " + shlex.join(args.runs) + options,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "threads": threads + (f"; onnxruntime: {torch.get_num_threads()} intra-op threads, "
                              "1 inter-op, sequential" if onnx else ""),
        "versions": _versions(),
        "load (1, 5, 15 min) before": _load(),
    }
    if not args.no_timing:
        meta["latency"] = (
            f"median of {args.rounds * args.repeats} timed calls: {args.rounds} round(s) in "
            f"which the networks take turns, each {args.warmup} warm-up then {args.repeats} "
            f"timed calls; at batch 1 and at batch {args.batch} (images/s = {args.batch} / "
            "its median); a "
            f"graph with a fixed batch of one (detection) is called {args.batch} times; eager "
            "= PyTorch, eval mode, inference_mode; ORT = the verified ONNX file in "
            "onnxruntime (CPU); inputs are validation images")
    meta["counts"] = (
        "params and GFLOP of the deployed graph (one image; convolutions and matrix "
        "products, 2 FLOP per multiply-add); peak activation memory = the most tensor bytes "
        "alive at once during one image's eager forward pass (weights and input excluded); "
        "weights = its safetensors file; score = the run's validation metric at the profiled "
        "checkpoint")
    return meta


def run(args: argparse.Namespace) -> int:
    from kdlab.runtime.threads import apply_thread_policy, parse_threads
    from kdlab.tools.deploy.profile import Settings, measure, time_in_rounds
    from kdlab.tools.deploy.profile_report import markdown, write_profile
    from kdlab.tools.deploy.verify import TOLERANCE

    if min(args.batch, args.repeats, args.rounds) < 1 or args.warmup < 0:
        raise UserError("--batch, --repeats and --rounds must be at least 1 and --warmup at "
                        "least 0.")
    onnx = not args.no_onnx
    if onnx:
        from kdlab.tools.deploy.onnx_format import require_onnx

        require_onnx()
    # one count for every timed call: a governor switching mid-measurement would skew it
    choice = apply_thread_policy(parse_threads(args.threads, "--threads"), look=True)
    if args.threads != "auto":
        choice = dataclasses.replace(choice, reason="--threads")
    subjects = gather(args.runs, args.which, max(args.batch, 8))
    meta = header(args, choice.describe(), onnx)
    with tempfile.TemporaryDirectory(prefix="kdlab-profile-") as scratch:
        onnx_dir = (Path(args.out) / "onnx" if args.out else Path(scratch)) if onnx else None
        settings = Settings(batch=args.batch, warmup=args.warmup, repeats=args.repeats,
                            rounds=args.rounds, threads=choice.threads,
                            timing=not args.no_timing, onnx_dir=onnx_dir,
                            tolerance=TOLERANCE if args.tolerance is None else args.tolerance)
        measured = []
        for s in subjects:
            print(f"  {s.label} ({s.model}) ...", flush=True)
            measured.append(measure(s, settings))
        if settings.timing:
            print(f"  timing: {args.rounds} round(s), the networks in turn ...", flush=True)
            time_in_rounds(measured, settings)
        rows = [m.row for m in measured]
    meta["load (1, 5, 15 min) after"] = _load()
    if args.out:
        text = write_profile(Path(args.out), rows, meta)
        print(text, end="")
        print(f"-> {args.out}/profile.md, profile.csv, profile.png"
              + (", onnx/" if onnx else ""))
    else:
        print(markdown(rows, meta, None), end="")
    return 0

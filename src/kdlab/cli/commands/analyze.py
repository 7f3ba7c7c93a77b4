"""``kdlab analyze``: FCFD's analyses of trained classification runs (Liu et al., ICLR 2023).

- ``kdlab analyze anisotropy RUN``: function anisotropy of a stage's feature (Sec. 1): KL of
  the outputs before and after moving the feature along random directions by one L2 distance,
  and the accuracy when every image moves along its most / least sensitive direction.
  Writes ``analysis/anisotropy.json`` and ``analysis/anisotropy.png`` into the run folder.
- ``kdlab analyze probe TEACHER_RUN STUDENT_RUN ...``: exit branches trained on the frozen
  teacher at two positions (Sec. 3.4, App. A.2; cached in the teacher's run folder), then fed
  each student's bridged features. Writes ``analysis/probe.json`` and ``analysis/probe.png``
  into the teacher's run folder.
- ``kdlab analyze similarity TEACHER_RUN STUDENT_RUN ...``: the feature-similarity picture
  (App. B, Fig. 4): teacher and (bridged) student features of the validation images of the
  first ``--classes`` classes, through the exit branch at ``--stage`` (its penultimate
  feature, the paper's) or as the stage's raw output, embedded with t-SNE, one panel per
  student; plus the mean cosine similarity and linear CKA per class. Writes
  ``analysis/similarity.{png,md,csv,json}`` into the teacher's run folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from kdlab.cli.commands.common import (
    WHICH,
    Restored,
    add_set_option,
    find_checkpoint,
    load_run_checkpoint,
    restore_run,
    run_config,
)
from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write_text


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze", help="FCFD's analyses of trained runs: function anisotropy, exit-branch "
        "probe, feature similarity",
        description="FCFD's analyses (Liu et al., ICLR 2023) of classification runs; results "
        "and plots go to the run folder's analysis/ (or --out).",
    )
    kinds = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    a = kinds.add_parser(
        "anisotropy", help="KL of the output when a stage's feature moves along random "
        "directions by one L2 distance (FCFD Sec. 1)",
        description="Move every image's feature at --stage along --directions shared random "
        "unit directions by the L2 distance --distance, continue the forward pass, and report "
        "the KL between the outputs before and after (mean; range of the per-direction means) "
        "and the top-1 when every image moves along its most / least sensitive direction "
        "(chosen per image among the random directions, as the paper does).",
    )
    a.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    a.add_argument("--stage", type=int, default=None,
                   help="1-based stage whose output is moved (default: N-1, the last FCFD "
                        "function-path position)")
    a.add_argument("--distance", type=float, default=None,
                   help="L2 distance of the move, the same for every image (default: "
                        "--relative-distance times the mean feature norm)")
    a.add_argument("--relative-distance", type=float, default=1.0,
                   help="without --distance: the distance as a multiple of the mean L2 norm "
                        "of the stage's features on the first batch (default 1.0)")
    a.add_argument("--directions", type=int, default=512,
                   help="random directions (default 512, as the paper)")
    a.add_argument("--batches", type=int, default=None,
                   help="validation batches to use (default: the whole split)")
    a.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    _common(a)
    a.set_defaults(run=run_anisotropy)

    b = kinds.add_parser(
        "probe", help="exit branches trained on a frozen teacher, fed the students' bridged "
        "features (FCFD Sec. 3.4)",
        description="Train exit branches (a fresh copy of --branch-model's later stages) on the "
        "frozen teacher's features at --positions, on the teacher run's data (cached in its run "
        "folder), then feed every student's feature, through its FCFD bridge B_st, to them and "
        "report the top-1. The branches' BatchNorm statistics are re-calibrated on each "
        "student's training features first (App. A.2).",
    )
    b.add_argument("teacher", metavar="TEACHER_RUN")
    b.add_argument("students", nargs="+", metavar="STUDENT_RUN",
                   help="student run folders or checkpoints (FCFD runs carry bridges)")
    b.add_argument("--positions", default="2,3",
                   help="1-based stages after which exit branches go (default 2,3 as App. A.2)")
    b.add_argument("--epochs", type=int, default=None,
                   help="epochs of branch training (default: the teacher run's schedule.epochs)")
    b.add_argument("--branch-model", default=None,
                   help="registered model whose later stages form the branches (default: the "
                        "teacher's architecture; the paper uses a stronger one)")
    b.add_argument("--no-recalibrate", dest="recalibrate", action="store_false",
                   help="test the students with the branches' teacher-feature BN statistics")
    b.add_argument("--seed", type=int, default=0, help="seed of the branches' training")
    b.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress of the branch training")
    _common(b)
    b.set_defaults(run=run_probe)

    c = kinds.add_parser(
        "similarity", help="teacher and student features embedded together with t-SNE, plus "
        "cosine similarity and linear CKA per class (FCFD App. B, Fig. 4)",
        description="Feed the validation images of the first --classes classes to the teacher "
        "and every student; take the features at --stage (the students' through their bridge "
        "B_st where their run has one) either through the exit branch there (--space branch, "
        "the paper's: its penultimate feature; branches trained and cached as by `analyze "
        "probe`) or as they are (--space stage, flattened); embed teacher and student points "
        "jointly with t-SNE (scikit-learn: pip install 'kdlab[analysis]'), one panel per "
        "student, and write per class the mean cosine similarity and linear CKA between the "
        "teacher's and each student's features (similarity.md / .csv).",
    )
    c.add_argument("teacher", metavar="TEACHER_RUN")
    c.add_argument("students", nargs="+", metavar="STUDENT_RUN",
                   help="student run folders or checkpoints distilled from the teacher run")
    c.add_argument("--stage", type=int, default=None,
                   help="1-based stage whose features are compared (default: N-1, the last "
                        "exit-branch position)")
    c.add_argument("--classes", type=int, default=10,
                   help="the first N classes of the validation split (default 10, as the paper)")
    c.add_argument("--per-class", type=int, default=100,
                   help="images per class (default 100: a CIFAR-100 test class, as the paper)")
    c.add_argument("--space", choices=("branch", "stage"), default="branch",
                   help="branch: the exit branch's penultimate feature (the paper's); stage: "
                        "the stage's output itself")
    c.add_argument("--colour", "--color", dest="colour", choices=("source", "class"),
                   default="source", help="colour the points by network (the paper's) or class")
    c.add_argument("--joint", action="store_true",
                   help="one t-SNE of the teacher and every student together (default: one per "
                        "student panel, the teacher's points with that student's, as the paper)")
    c.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    c.add_argument("--no-picture", dest="picture", action="store_false",
                   help="the table only (no t-SNE; scikit-learn not needed)")
    c.add_argument("--epochs", type=int, default=None,
                   help="--space branch: epochs of branch training (default: the teacher run's)")
    c.add_argument("--branch-model", default=None,
                   help="--space branch: model whose later stages form the branch (default: "
                        "the teacher's architecture)")
    c.add_argument("--no-recalibrate", dest="recalibrate", action="store_false",
                   help="--space branch: feed the students with the branch's teacher-feature "
                        "BN statistics")
    c.add_argument("--seed", type=int, default=0, help="seed of the branch and of t-SNE")
    c.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress of the branch training")
    _common(c)
    c.set_defaults(run=run_similarity)


def _common(p: Any) -> None:
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint in a run folder")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | ... (default: the run's)")
    p.add_argument("--out", metavar="DIR", help="write analysis files here instead of the "
                   "run folder's analysis/")
    add_set_option(p)


# --------------------------------------------------------------------- helpers
def _restore(path: str, which: str, overrides: list[str], device: str | None,
             role: str = "run", thread_policy: bool = True) -> Restored:
    """A classification run's distiller on the requested device (default: the run's); the
    first run a command restores applies its thread policy (``thread_policy``)."""
    from kdlab.training.build import resolve_device

    ckpt_path = find_checkpoint(path, which)
    beside = (ckpt_path.parent / "config.yaml").is_file()
    task = run_config(ckpt_path, {} if beside else load_run_checkpoint(ckpt_path), overrides).task
    if task != "classification":
        raise UserError(f"The {role} {str(ckpt_path)!r} is a {task} run; kdlab analyze needs "
                        "a classification run (FCFD's analyses read a classifier's output).")
    r = restore_run(path, which, overrides, device=device, load_data=False,
                    thread_policy=thread_policy)
    if device is None and r.cfg.train.device != "cpu":
        r.device = resolve_device(r.cfg.train.device)
        r.distiller.to(r.device)
    r.distiller.eval()
    return r


def _loaders(r: Restored) -> Any:
    from kdlab.data import build_loaders

    return build_loaders(r.cfg.data, r.device, seed=r.cfg.train.seed)


def _out_dir(r: Restored, out: str | None) -> Path:
    folder = Path(out) if out else r.ckpt_path.parent / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _limited(loader: Any, batches: int | None) -> Any:
    if batches is None:
        return loader
    if batches < 1:
        raise UserError(f"--batches must be at least 1, got {batches}.")
    return itertools.islice(loader, batches)


def _positions(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks:
        raise UserError(f"--positions {text!r} is not a list of stage numbers; write e.g. 2,3.")
    return sorted(set(ks))


# --------------------------------------------------------------------- anisotropy
def run_anisotropy(args: argparse.Namespace) -> int:
    from kdlab.tools.analysis.anisotropy import check_stage, measure_anisotropy
    from kdlab.tools.analysis.plots import plot_anisotropy

    r = _restore(args.path, args.which, args.overrides, args.device)
    net = r.distiller.student
    stage = net.num_stages - 1 if args.stage is None else args.stage
    check_stage(net, stage)
    val = _loaders(r).val
    result = measure_anisotropy(net, _limited(val, args.batches), stage=stage,
                                distance=args.distance, relative=args.relative_distance,
                                directions=args.directions,
                                seed=args.seed, device=r.device)
    folder = _out_dir(r, args.out)
    record = {"checkpoint": str(r.ckpt_path), "model": r.cfg.model.student,
              "data": r.cfg.data.name, **result.to_dict()}
    atomic_write_text(folder / "anisotropy.json", json.dumps(record, indent=2) + "\n")
    plot_anisotropy(result, folder / "anisotropy.png", title=f"{r.cfg.model.student}")
    print(f"{r.ckpt_path}  ({r.cfg.model.student}, {r.cfg.data.name} val, {result.images} "
          f"images)")
    print(f"stage {stage} {result.feature_shape}, L2 distance {result.distance:.4g} "
          f"({result.relative_distance:.3g} x the mean feature norm {result.feature_norm:.4g}), "
          f"{result.directions} directions")
    print(f"{'KL mean':>10} {'KL min':>10} {'KL max':>10}   (per-direction means, nats)")
    print(f"{result.kl_mean:>10.4f} {result.kl_min:>10.4f} {result.kl_max:>10.4f}")
    print(f"{'direction':<16} {'top-1':>8} {'drop':>8}")
    print(f"{'unmoved':<16} {result.accuracy:>8.2f} {0.0:>8.2f}")
    print(f"{'least sensitive':<16} {result.accuracy_least:>8.2f} {result.drop_least:>8.2f}")
    print(f"{'most sensitive':<16} {result.accuracy_most:>8.2f} {result.drop_most:>8.2f}")
    print(f"-> {folder / 'anisotropy.json'}, {folder / 'anisotropy.png'}")
    return 0


# --------------------------------------------------------------------- probe
def _label(r: Restored) -> str:
    return r.ckpt_path.parent.name or str(r.ckpt_path)


def _check_student(s: Restored, t: Restored) -> None:
    if s.cfg.data.name != t.cfg.data.name:
        raise UserError(f"The student {str(s.ckpt_path)!r} was trained on {s.cfg.data.name!r}, "
                        f"the teacher run on {t.cfg.data.name!r}; probe students of the same "
                        "data set.")
    if s.cfg.model.teacher is not None and s.cfg.model.teacher != t.cfg.model.student:
        raise UserError(f"The student {str(s.ckpt_path)!r} was distilled from a "
                        f"{s.cfg.model.teacher!r}, but the teacher run is a "
                        f"{t.cfg.model.student!r}; give the teacher run it was distilled from.")


def _teacher_note(s: Restored, t: Restored) -> str | None:
    """A note when a student names another teacher checkpoint than the teacher run's (its
    bridges then map to that checkpoint's features; a moved file gives a false alarm)."""
    ckpt = s.cfg.model.teacher_checkpoint
    if not ckpt or Path(ckpt).resolve() == t.ckpt_path.resolve():
        return None
    return (f"note: {str(s.ckpt_path)!r} was distilled from the teacher checkpoint {ckpt!r}, "
            f"not {str(t.ckpt_path)!r}; its bridges map to that checkpoint's features.")


def run_probe(args: argparse.Namespace) -> int:
    from kdlab.tools.analysis.exit_branch import check_position, file_digest
    from kdlab.tools.analysis.plots import plot_probe
    from kdlab.tools.analysis.probe import exit_branches, probe_student

    t = _restore(args.teacher, args.which, args.overrides, args.device, role="teacher run")
    teacher = t.distiller.student
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}.")
    positions = _positions(args.positions)
    for k in positions:
        check_position(teacher, k)
    students = [_restore(p, args.which, [], str(t.device), role="student run",
                         thread_policy=False) for p in args.students]
    for s in students:
        _check_student(s, t)
        note = _teacher_note(s, t)
        if note:
            print(note, file=sys.stderr)
    epochs = t.cfg.schedule.epochs if args.epochs is None else args.epochs
    branch_model = args.branch_model or t.cfg.model.student
    loaders = _loaders(t)
    key = {"teacher_checkpoint_sha256": file_digest(t.ckpt_path), "data": t.cfg.to_dict()["data"]}
    branches = exit_branches(teacher, positions, folder=t.ckpt_path.parent, key=key,
                             info=loaders.info, train=loaders.train, val=loaders.val,
                             epochs=epochs, branch_model=branch_model, device=t.device,
                             progress=args.progress, seed=args.seed)
    results = []
    for i, s in enumerate(students):
        res = probe_student(_label(s), s.distiller, teacher, branches, train=loaders.train,
                            val=loaders.val, device=t.device, model=s.cfg.model.student,
                            method=s.cfg.method_name, calibrate=args.recalibrate)
        results.append(res)
        if args.progress != "none":
            done = ", ".join("-" if a is None else f"{a:.2f}" for a in res.accuracy.values())
            print(f"probed student {i + 1}/{len(students)} {res.label}: {done}", flush=True)
    folder = _out_dir(t, args.out)
    record = {
        "teacher": {"checkpoint": str(t.ckpt_path), "model": t.cfg.model.student,
                    "data": t.cfg.data.name},
        "positions": positions,
        "branch": {"model": branch_model, "epochs": epochs, "seed": args.seed,
                   "accuracy": branches.accuracy, "cached": branches.cached},
        "recalibrated": args.recalibrate,
        "students": [{"run": str(s.ckpt_path),
                      "teacher_checkpoint": s.cfg.model.teacher_checkpoint, **res.to_dict()}
                     for s, res in zip(students, results)],
    }
    atomic_write_text(folder / "probe.json", json.dumps(record, indent=2) + "\n")
    rows = [(f"teacher ({t.cfg.model.student})", dict(branches.accuracy))]
    rows += [(f"{res.label} ({res.method})", res.accuracy) for res in results]
    plot_probe(positions, rows, folder / "probe.png")
    _print_probe(positions, rows, results, branches.cached)
    print(f"-> {folder / 'probe.json'}, {folder / 'probe.png'}")
    return 0


def _print_probe(positions: list[int], rows: list[tuple[str, dict[int, float | None]]],
                 results: list[Any], cached: dict[int, bool]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'network':<{width}}" + "".join(f"{f'stage {k}':>10}" for k in positions))
    for label, acc in rows:
        cells = ["-" if acc.get(k) is None else f"{acc[k]:.2f}" for k in positions]
        print(f"{label:<{width}}" + "".join(f"{c:>10}" for c in cells))
    for res in results:
        for k in positions:
            if res.accuracy.get(k) is None:
                print(f"{res.label}: no result at stage {k}: {res.feed[k]}")
    reused = [k for k in positions if cached.get(k)]
    if reused:
        print(f"exit branches at stage(s) {', '.join(map(str, reused))} reused from the cache")


# --------------------------------------------------------------------- similarity
def _similarity_stage(teacher: Any, stage: int | None, space: str) -> int:
    from kdlab.tools.analysis.exit_branch import check_position

    k = teacher.num_stages - 1 if stage is None else stage
    if space == "branch":
        check_position(teacher, k)
    elif not 1 <= k <= teacher.num_stages:
        raise UserError(f"--stage {k} is out of range: this teacher has stages "
                        f"1..{teacher.num_stages} (1-based).")
    return k


def run_similarity(args: argparse.Namespace) -> int:
    from kdlab.tools.analysis import similarity as sim
    from kdlab.tools.analysis.probe import teacher_feed

    if args.picture:
        sim.require_tsne()
    t = _restore(args.teacher, args.which, args.overrides, args.device, role="teacher run")
    teacher = t.distiller.student
    k = _similarity_stage(teacher, args.stage, args.space)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}.")
    students = [_restore(p, args.which, [], str(t.device), role="student run",
                         thread_policy=False) for p in args.students]
    feeds = _student_feeds(students, t, k)
    loaders = _loaders(t)
    subset = sim.class_subset(loaders.val, args.classes, args.per_class)
    t_fn, branch, branch_info = teacher_feed(teacher, k), None, None
    if args.space == "branch":
        branch, branch_info = _exit_branch(args, t, k, loaders)
        t_fn = sim.penultimate(branch, t_fn)
    t_feat = sim.collect(t_fn, subset.images, t.device)
    rows, s_feats = [], []
    for s, (feed, _) in zip(students, feeds):
        fn = feed
        if branch is not None:  # re-calibrated on the student's features (App. A.2)
            from kdlab.tools.analysis.exit_branch import recalibrate

            tested = (recalibrate(branch, feed, loaders.train, t.device)
                      if args.recalibrate else branch)
            fn = sim.penultimate(tested, feed)
        f = sim.collect(fn, subset.images, t.device)
        s_feats.append(f)
        rows += sim.similarity_rows(_label(s), t_feat, f, subset.labels)
    folder = _out_dir(t, args.out)
    what = ("exit-branch penultimate features" if args.space == "branch"
            else "stage outputs (flattened)")
    header = [f"# Feature similarity to the teacher at stage {k}", "",
              f"Teacher run `{t.ckpt_path}` ({t.cfg.model.student}, {t.cfg.data.name} "
              f"validation split): the first {args.classes} classes, up to {args.per_class} "
              f"images each ({len(subset.labels)} images); {what}, each student's through "
              + ", ".join(f"`{_label(s)}`: {how}" for s, (_, how) in zip(students, feeds))
              + ". Mean cosine: per image between its teacher and student feature; linear "
              "CKA (Kornblith et al. 2019) between the two sets, biased and debiased; the "
              "class `all` takes every image."]
    sim.write_tables(rows, folder / "similarity.md", folder / "similarity.csv", header)
    record = {"teacher": str(t.ckpt_path), "stage": k, "space": args.space,
              "classes": args.classes, "per_class": args.per_class,
              "images": len(subset.labels), "branch": branch_info,
              "students": [{"run": str(s.ckpt_path), "method": s.cfg.method_name, "feed": how}
                           for s, (_, how) in zip(students, feeds)],
              "rows": [r.__dict__ for r in rows]}
    outputs = [folder / "similarity.md", folder / "similarity.csv", folder / "similarity.json"]
    if args.picture:
        record["tsne"] = _similarity_picture(args, students, t_feat, s_feats,
                                             subset.labels.numpy(), folder / "similarity.png",
                                             f"{t.cfg.model.student} stage {k}, {what}, t-SNE")
        outputs.append(folder / "similarity.png")
    atomic_write_text(folder / "similarity.json", json.dumps(record, indent=2) + "\n")
    _print_similarity(rows)
    print("-> " + ", ".join(str(p) for p in outputs))
    return 0


def _student_feeds(students: list[Restored], t: Restored, k: int) -> list[tuple[Any, str]]:
    """Each student's features at the teacher's stage ``k`` (through its bridge where the
    method has one) and how they are read; a student that cannot be compared there is
    refused."""
    from kdlab.tools.analysis.probe import student_feed

    feeds = []
    for s in students:
        _check_student(s, t)
        note = _teacher_note(s, t)
        if note:
            print(note, file=sys.stderr)
        feed, how = student_feed(s.distiller, t.distiller.student, k)
        if feed is None:
            raise UserError(f"The student {str(s.ckpt_path)!r} cannot be compared at stage {k}: "
                            f"{how}; pick a --stage where it has a bridge or the teacher's shape.")
        feeds.append((feed, how))
    return feeds


def _exit_branch(args: argparse.Namespace, t: Restored, k: int,
                 loaders: Any) -> tuple[Any, dict[str, Any]]:
    """The teacher's exit branch at stage ``k`` (trained once, then read from its cache
    beside the teacher's run; FCFD §3.4, App. A.2) and what the record says of it."""
    from kdlab.tools.analysis.exit_branch import file_digest
    from kdlab.tools.analysis.probe import exit_branches

    epochs = t.cfg.schedule.epochs if args.epochs is None else args.epochs
    model = args.branch_model or t.cfg.model.student
    key = {"teacher_checkpoint_sha256": file_digest(t.ckpt_path),
           "data": t.cfg.to_dict()["data"]}
    branches = exit_branches(t.distiller.student, [k], folder=t.ckpt_path.parent, key=key,
                             info=loaders.info, train=loaders.train, val=loaders.val,
                             epochs=epochs, branch_model=model, device=t.device,
                             progress=args.progress, seed=args.seed)
    return branches.branches[k], {"model": model, "epochs": epochs,
                                  "accuracy": branches.accuracy[k],
                                  "cached": branches.cached[k],
                                  "recalibrated": args.recalibrate}


def _similarity_picture(args: argparse.Namespace, students: list[Restored], t_feat: Any,
                        s_feats: list[Any], labels: Any, path: Path,
                        title: str) -> dict[str, Any]:
    """One t-SNE panel per student beside the teacher's points (embedded jointly, or one
    embedding per pair), coloured by class; returns the embedding's settings."""
    from kdlab.tools.analysis import similarity as sim
    from kdlab.tools.analysis.plots import plot_similarity

    if args.joint:
        points = sim.tsne([t_feat, *s_feats], args.seed, args.perplexity)
        pairs = [(points[0], p) for p in points[1:]]
    else:
        pairs = [tuple(sim.tsne([t_feat, f], args.seed, args.perplexity)) for f in s_feats]
    panels = [(_panel_title(s), tp, sp, labels) for s, (tp, sp) in zip(students, pairs)]
    plot_similarity(panels, path, colour=args.colour, title=title)
    return {"seed": args.seed, "perplexity": args.perplexity, "joint": args.joint,
            "colour": args.colour}


def _panel_title(s: Restored) -> str:
    """The student's label, with its method when the label does not already say it."""
    label, method = _label(s), s.cfg.method_name
    return label if label == method else f"{label} ({method})"


def _print_similarity(rows: list[Any]) -> None:
    width = max(len(r.student) for r in rows) + 2
    print(f"{'student':<{width}}{'class':>6}{'images':>8}{'cosine':>9}{'CKA':>8}{'CKA deb.':>10}")
    for r in rows:
        cls = "all" if r.cls < 0 else str(r.cls)
        print(f"{r.student:<{width}}{cls:>6}{r.images:>8}{r.cosine:>9.4f}{r.cka:>8.4f}"
              f"{r.cka_debiased:>10.4f}")

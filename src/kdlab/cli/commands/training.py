"""``kdlab train`` (teachers and baselines) and ``kdlab distill`` (a student from a teacher)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from kdlab.cli.commands.common import add_set_option
from kdlab.core.config import RunConfig, load_config
from kdlab.errors import UserError
from kdlab.training.report import print_summary


def add_parser(sub: Any) -> None:
    for name, help_text in (
        ("train", "train a teacher or a baseline from a recipe (no teacher)"),
        ("distill", "train a student from a trained teacher with a distillation recipe"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", metavar="RECIPE",
                       help="YAML recipe (see recipes/); - reads it from standard input")
        add_set_option(p)
        p.add_argument("--out", metavar="DIR", help="run folder (overrides train.out_dir)")
        p.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
        p.set_defaults(run=run, mode=name)


def prepare(args: argparse.Namespace) -> RunConfig:
    """Load and check the recipe for ``train`` or ``distill`` before anything is written."""
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    derived: dict[str, str] = {}
    cfg = load_config(args.recipe, overrides, derived=derived)
    if args.resume and "schedule.milestones" in derived:
        derived["schedule.milestones"] = keep_saved_milestones(cfg, derived)
    cfg.plugins = load_run_plugins(cfg, getattr(args, "plugins", []), args.resume)
    check(cfg, args.mode)
    from kdlab.cli.commands.failures import memory_hint

    args.memory_hint = memory_hint(cfg)  # what an out-of-memory names (kdlab.cli)
    from kdlab.training.run_lock import is_main_process

    if is_main_process():
        for note in derived.values():
            print(note)
    return cfg


def keep_saved_milestones(cfg: RunConfig, derived: dict[str, str]) -> str:
    """On ``--resume``, milestones the user did not write are the resumed run's own (so that
    more epochs do not move them); returns the line that says which milestones apply."""
    from kdlab.training.resume import read_saved

    saved = read_saved(Path(cfg.train.out_dir))
    if saved is None or saved.config.schedule.name != "multistep":
        return derived["schedule.milestones"]
    cfg.schedule.milestones = list(saved.config.schedule.milestones)
    return (f"schedule.milestones {cfg.schedule.milestones}: not given, so those of the run "
            "being resumed")


def load_run_plugins(cfg: RunConfig, loaded: list[str], resume: bool) -> list[str]:
    """Import the recipe's plugins; returns what the run records: those, the ones the command
    line loaded (``--import``, entry points) and, on ``--resume``, the run's own."""
    from kdlab.core.plugins import load_plugins

    previous: list[str] = []
    saved = Path(cfg.train.out_dir) / "config.yaml"
    if resume and saved.is_file():
        tree = yaml.safe_load(saved.read_text()) or {}
        previous = [str(m) for m in tree.get("plugins") or []] if isinstance(tree, dict) else []
    load_plugins(previous, source=str(saved))
    return load_plugins([*previous, *cfg.plugins, *loaded], source="the recipe's plugins")


def check(cfg: RunConfig, mode: str) -> None:
    """Settings, names, method options and the teacher, so that mistakes fail before a run
    folder exists."""
    from kdlab.methods import METHODS
    from kdlab.training.build import check_model_config
    from kdlab.training.validate import validate_config

    validate_config(cfg)
    method = METHODS.get(cfg.method_name)
    if mode == "train" and method.needs_teacher:
        raise UserError(
            f"Method {cfg.method_name!r} needs a teacher: run it with `kdlab distill` and set "
            "model.teacher with model.teacher_checkpoint or model.teacher_pretrained."
        )
    if mode == "distill" and not method.needs_teacher:
        raise UserError(
            f"Method {cfg.method_name!r} trains without a teacher: run it with `kdlab train`."
        )
    check_model_config(cfg)


def run(args: argparse.Namespace) -> int:
    cfg = prepare(args)
    from kdlab.training.trainer import Trainer

    # A failed start removes the run folder it made (kdlab.training.run_lock.RunLock.release).
    summary = Trainer(cfg, resume=args.resume).fit()
    from kdlab.training.run_lock import is_main_process

    if is_main_process():  # under torchrun one `done:` line, from rank 0
        print_summary(summary)
    return 0

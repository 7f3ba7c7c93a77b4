"""``kdlab tune``: search a recipe's hyper-parameters with Optuna (:mod:`kdlab.tools.tune`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from kdlab.cli.commands.common import add_set_option
from kdlab.errors import UserError

SPACE_HELP = ("a setting to search (repeatable): KEY=LOW:HIGH, KEY=LOW:HIGH:log, "
              "KEY=LOW:HIGH:STEP or KEY=A,B,C; KEY+KEY=... draws one value for both; "
              "method.name=kd,dkd,fcfd searches methods, each with the method.* settings it has")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune", help="search a recipe's hyper-parameters with Optuna (pip install 'kdlab[tune]')",
        description="Run trials of RECIPE with values drawn from --space, each an ordinary run "
        "folder under OUT/trials/; prune poor trials from their per-epoch validation scores; "
        "keep the study in a database (OUT/study.db by default) so that the same command "
        "resumes it and several processes share it; write OUT/best.yaml, OUT/trials.md and "
        "the plots. See docs/tune.md.")
    p.add_argument("recipe", metavar="RECIPE", help="YAML recipe (see recipes/)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC", help=SPACE_HELP)
    p.add_argument("--trials", type=int, default=20, metavar="N",
                   help="trials the study runs in all, over every process (default 20); "
                   "running again with a larger N extends a finished study")
    p.add_argument("--epochs", type=int, metavar="E",
                   help="schedule.epochs of every trial (default: the recipe's)")
    add_set_option(p)
    p.add_argument("--out", metavar="DIR",
                   help="the search's folder (default runs/tune/<recipe folder>/<recipe name>)")
    p.add_argument("--storage", metavar="URL",
                   help="an Optuna RDB URL for the study (default sqlite:///OUT/study.db); "
                   "processes on several machines share one study through e.g. "
                   "postgresql://user@host/db")
    p.add_argument("--study", metavar="NAME", help="the study's name (default: OUT's name)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="stop trials early: median (below the median of earlier trials at the "
                   "same epoch), hyperband, or none (default median)")
    p.add_argument("--prune-from", type=int, default=1, metavar="EPOCH",
                   help="the first epoch after which a trial may be pruned (default 1)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="how values are drawn (default tpe)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="the sampler's seed (give each process of a shared study its own)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="a running trial's heartbeat; a trial silent for twice this long is "
                   "taken for dead and run again (default 60)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise UserError("kdlab tune needs Optuna, which is not installed: pip install "
                        "'kdlab[tune]'.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("kdlab tune runs each trial in one process; scale a search out by "
                        "starting more tune processes on one --storage, not with torchrun.")
    for flag, value, least in (("--trials", args.trials, 0), ("--epochs", args.epochs, 1),
                               ("--prune-from", args.prune_from, 1),
                               ("--heartbeat", args.heartbeat, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}.")
    for text in args.overrides:
        if text.split("=", 1)[0].strip() == "train.out_dir":
            raise UserError("kdlab tune puts each trial in OUT/trials/NNNN: give --out instead "
                            "of --set train.out_dir.")
    from kdlab.cli.commands.training import load_run_plugins
    from kdlab.core.config import load_config
    from kdlab.tasks import TASKS
    from kdlab.tools.tune.settings import TuneSettings
    from kdlab.tools.tune.space import parse_space
    from kdlab.tools.tune.study import search
    from kdlab.tools.tune.trial import check_space, check_trial_config

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"schedule.epochs={args.epochs}")
    base = load_config(args.recipe, overrides)
    base.plugins = load_run_plugins(base, getattr(args, "plugins", []), False)
    check_trial_config(base)
    space = parse_space(args.space, base)
    check_space(space, base)
    settings = TuneSettings(
        recipe=args.recipe, space=list(args.space), trials=args.trials, epochs=args.epochs,
        overrides=list(args.overrides), out=args.out, storage=args.storage, study=args.study,
        pruner=args.pruner, prune_from=args.prune_from, sampler=args.sampler, seed=args.seed,
        heartbeat=args.heartbeat)
    search(settings, base, space, TASKS.get(base.task).primary)
    return 0

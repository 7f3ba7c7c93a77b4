"""What one ``kdlab tune`` process is asked to do (:class:`TuneSettings`), where its folder
goes by default, and a storage URL fit to print; shared by the study loop
(:mod:`kdlab.tools.tune.study`) and its results (:mod:`kdlab.tools.tune.results`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TuneSettings:
    """What ``kdlab tune`` runs (see ``kdlab tune --help`` and docs/tune.md)."""

    recipe: str
    space: list[str]
    trials: int = 20
    epochs: int | None = None  # schedule.epochs of every trial (None: the recipe's)
    overrides: list[str] = field(default_factory=list)
    out: str | None = None  # None: runs/tune/<recipe folder>/<recipe name>
    storage: str | None = None  # None: sqlite:///OUT/study.db
    study: str | None = None  # None: the name of OUT
    pruner: str = "median"
    prune_from: int = 1  # the first epoch after which a trial may be pruned
    sampler: str = "tpe"
    seed: int | None = None  # the sampler's seed (give each process its own)
    heartbeat: int = 60  # seconds between a running trial's heartbeats


def default_out(recipe: str) -> Path:
    p = Path(recipe)
    return Path("runs") / "tune" / p.parent.name / p.stem


def redacted(url: str) -> str:
    """A storage URL without its password."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url

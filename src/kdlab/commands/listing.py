"""``kdlab list models|methods|datasets``: registered names with a one-line description."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

KINDS = ("models", "methods", "datasets")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered models, methods or datasets",
                       description="List registered names with the first line of their docstring.")
    p.add_argument("kind", choices=KINDS)
    p.set_defaults(run=run)


def registry(kind: str) -> Any:
    if kind == "models":
        from kdlab.models import MODELS

        return MODELS
    if kind == "methods":
        from kdlab.methods import METHODS

        return METHODS
    from kdlab.data import DATASETS

    return DATASETS


def summary_line(obj: Any) -> str:
    """The first line of an entry's docstring ('' when it has none)."""
    doc = inspect.cleandoc(obj.__doc__ or "")  # its own docstring, not an inherited one
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def run(args: argparse.Namespace) -> int:
    reg = registry(args.kind)
    names = reg.names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {summary_line(reg.get(name))}".rstrip())
    return 0

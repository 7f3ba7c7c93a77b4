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


def describe(kind: str, name: str) -> str:
    """One entry's description; a model built for another task than classification starts
    with its task in brackets, e.g. ``[segmentation]``."""
    text = summary_line(registry(kind).get(name))
    if kind == "models":
        from kdlab.models import model_task

        task = model_task(name)
        if task != "classification":
            text = f"[{task}] {text}"
    return text


def run(args: argparse.Namespace) -> int:
    names = registry(args.kind).names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(args.kind, name)}".rstrip())
    return 0

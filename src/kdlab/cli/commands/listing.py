"""``kdlab list models|methods|datasets|tasks``: registered names, the task(s) each serves,
and a one-line description."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

KINDS = ("models", "methods", "datasets", "tasks")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered models, methods, datasets or tasks",
                       description="List registered names with the task(s) they serve and the "
                       "first line of their docstring.")
    p.add_argument("kind", choices=KINDS)
    p.set_defaults(run=run)


def registry(kind: str) -> Any:
    if kind == "models":
        from kdlab.models import MODELS

        return MODELS
    if kind == "methods":
        from kdlab.methods import METHODS

        return METHODS
    if kind == "tasks":
        from kdlab.tasks import TASKS

        return TASKS
    from kdlab.data import DATASETS

    return DATASETS


def served_tasks(kind: str, obj: Any) -> str:
    """The task(s) a registry entry serves: a model's or dataset's task, a method's tasks."""
    if kind == "methods":
        return ",".join(obj.supported_tasks())
    if kind == "datasets":
        return str(obj.info.task)
    if kind == "models":
        return str(getattr(obj, "task", "classification"))
    return ""


def summary_line(obj: Any) -> str:
    """The first line of an entry's docstring ('' when it has none)."""
    doc = inspect.cleandoc(obj.__doc__ or "")  # its own docstring, not an inherited one
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def run(args: argparse.Namespace) -> int:
    reg = registry(args.kind)
    names = reg.names()
    tasks = {n: served_tasks(args.kind, reg.get(n)) for n in names}
    width = max((len(n) for n in names), default=0)
    task_width = max((len(t) for t in tasks.values()), default=0)
    for name in names:
        served = f"{tasks[name]:<{task_width}}  " if task_width else ""
        print(f"{name:<{width}}  {served}{summary_line(reg.get(name))}".rstrip())
    if args.kind == "models" and "timm/" in reg.prefixes():
        print("timm/<name>: any timm model, e.g. timm/resnet18 (pip install 'kdlab[timm]')")
    return 0

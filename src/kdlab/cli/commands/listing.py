"""``kdlab list models|methods|datasets|tasks``: registered names, the task(s) each serves,
and a one-line description.

The registries fill themselves by importing every model, method and dataset, which imports
torch (seconds, hundreds of MB). So kdlab's own entries are also written down in
:mod:`kdlab.cli.commands.catalogue` (``python -m kdlab.cli.commands.listing`` rewrites it from the
registries; ``tests/test_cli.py`` holds the two together), and ``kdlab list`` reads that
unless the registry is loaded already: a plugin (``--import``, an entry point) imports it to
register its entries, and then the live registry, plugin entries included, is listed.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

KINDS = ("models", "methods", "datasets", "tasks")
#: the package whose import fills each registry
PACKAGES = {"models": "kdlab.models", "methods": "kdlab.methods", "datasets": "kdlab.data",
            "tasks": "kdlab.tasks"}
Row = tuple[str, str, str]  # name, task(s), first docstring line


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


def live_rows(kind: str) -> tuple[list[Row], list[str]]:
    """(rows, name prefixes) of the registry, imported if need be."""
    reg = registry(kind)
    rows = [(name, served_tasks(kind, reg.get(name)), summary_line(reg.get(name)))
            for name in reg.names()]
    return rows, list(reg.prefixes())


def rows_of(kind: str) -> tuple[list[Row], list[str]]:
    """The live registry when it is loaded (plugins included), else the catalogue."""
    if PACKAGES[kind] in sys.modules:
        return live_rows(kind)
    from kdlab.cli.commands.catalogue import ENTRIES, PREFIXES

    return [tuple(r) for r in ENTRIES[kind]], list(PREFIXES.get(kind, []))


def run(args: argparse.Namespace) -> int:
    rows, prefixes = rows_of(args.kind)
    width = max((len(n) for n, _, _ in rows), default=0)
    task_width = max((len(t) for _, t, _ in rows), default=0)
    for name, tasks, summary in rows:
        served = f"{tasks:<{task_width}}  " if task_width else ""
        print(f"{name:<{width}}  {served}{summary}".rstrip())
    if args.kind == "models" and "timm/" in prefixes:
        print("timm/<name>: any timm model, e.g. timm/resnet18 (pip install 'kdlab[timm]')")
    return 0


def catalogue_source() -> str:
    """The text of :mod:`kdlab.cli.commands.catalogue` for the registries as they are now (run
    it in a process that imported no plugin)."""
    entries, prefixes = {}, {}
    for kind in KINDS:
        entries[kind], prefixes[kind] = live_rows(kind)
    lines = ["# ruff: noqa: E501",
             '"""kdlab\'s own registry entries, for `kdlab list` without importing torch.', "",
             "Written by `python -m kdlab.cli.commands.listing` from the registries; do not edit.",
             '"""', "", "ENTRIES = {"]
    for kind in KINDS:
        lines.append(f"    {kind!r}: [")
        lines += [f"        {row!r}," for row in entries[kind]]
        lines.append("    ],")
    lines += ["}", f"PREFIXES = {prefixes!r}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(__file__).with_name("catalogue.py")
    target.write_text(catalogue_source())
    print(f"wrote {target}")

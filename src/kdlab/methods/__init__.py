"""Method registry: every entry is a :class:`~kdlab.methods.base.Distiller` subclass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdlab.autoimport import import_submodules
from kdlab.config import build_dataclass
from kdlab.domains import check_method_domains
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged import Staged
from kdlab.registry import Registry
from kdlab.tasks import Task, build_task

METHODS: Registry = Registry("method")


def build_distiller(
    name: str,
    options: Mapping[str, Any],
    student: Staged,
    teacher: Staged | None,
    *,
    train_size: int | None = None,
    task: Task | None = None,
) -> Distiller:
    """Build method ``name`` with hyper-parameters ``options`` (checked against its Config)
    for ``task`` (classification by default); a method that does not support the task is a
    UserError."""
    task = task if task is not None else build_task("classification")
    cls = METHODS.get(name).for_task(task.name)
    cfg = build_dataclass(cls.Config, options, where=f"method.{name}")
    check_method_domains(cfg, f"method.{name}")
    return cls(student, teacher, cfg, train_size=train_size, task=task)


import_submodules(__name__)

__all__ = ["METHODS", "Distiller", "Losses", "build_distiller"]

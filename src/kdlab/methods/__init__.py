"""Method registry: every entry is a :class:`~kdlab.methods.base.Distiller` subclass.

One folder per method (``kdlab.methods.fcfd``, ``kdlab.methods.kd``, ...) holds the method,
its private losses and modules, and its variants for other tasks; :mod:`.shared` holds what
two methods or more use, :mod:`.base` the Distiller and :mod:`.detection_base` the base of the
detection variants. :data:`METHODS` imports every module below this package on its first
lookup, so a new folder registers itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdlab.core.config import build_dataclass
from kdlab.core.registry import Registry
from kdlab.core.settings import check_settings
from kdlab.errors import UserError
from kdlab.methods.base import Distiller, Losses
from kdlab.models.staged.view import Staged
from kdlab.tasks import Task, build_task

#: filled by every module below kdlab.methods (one folder per method)
METHODS: Registry = Registry("method", filled_by=("kdlab.methods",))


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
    check_stages(name, cls, student, teacher)
    cfg = method_config(cls, options, name=name, task=task.name)
    return cls(student, teacher, cfg, train_size=train_size, task=task)


def method_config(cls: type[Distiller], options: Mapping[str, Any], *, name: str,
                  task: str) -> Any:
    """``options`` as the settings of method ``cls`` (registered as ``name``) for ``task``:
    its ``Config``, checked by :func:`~kdlab.core.settings.check_settings` (each field's
    domain, then the rules between fields). An unknown key, a wrong type or a value the
    method cannot take is a UserError naming ``method.<name>.<setting>``."""
    cfg = build_dataclass(cls.Config, options, where=f"method.{name}")
    check_settings(cfg, f"method.{name}", task)
    return cfg


def check_stages(name: str, cls: type[Distiller], student: Staged,
                 teacher: Staged | None) -> None:
    """A method that distils intermediate feature maps refuses a network without stages."""
    if not cls.uses_stages:
        return
    for role, net in (("student", student), ("teacher", teacher)):
        if net is not None and getattr(net, "num_stages", None) == 0:  # a detector: no view
            model = getattr(net, "kdlab_spec", {}).get("model", type(net.net).__name__)
            stage_free = [n for n in METHODS.names() if not METHODS.get(n).uses_stages]
            raise UserError(
                f"Method {name!r} distils intermediate feature maps but the {role} {model!r} "
                "has no stages (its forward is not a sequence of modules, e.g. a vision "
                f"transformer); use a method on logits or embeddings ({', '.join(stage_free)}) "
                "or a convolutional network.")


__all__ = ["METHODS", "Distiller", "Losses", "build_distiller", "method_config"]

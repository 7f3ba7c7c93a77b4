"""Settings whose valid values are declared on their dataclass field, and the check of them.

Every setting of a run (:mod:`kdlab.core.config`) and of a method's ``Config`` says on its
field which values it accepts::

    temperature: float = setting(4.0, range="> 0")  # softens both distributions
    teacher_bn: str = setting("eval", choices=("eval", "batch"))
    num_paths: int | str = setting(2, range=">= 0", choices=("all",))
    milestones: list[int] = setting(factory=lambda: [150, 180, 210], range=">= 1")

(range texts: :class:`kdlab.core.domains.Domain`). A dataclass whose settings depend on each
other (a warm-up shorter than the run, one term of several left on) says so in a method
``check(self, where, task)`` that raises one :class:`~kdlab.errors.UserError` sentence.
:func:`check_settings` runs both; the validation pass (:mod:`kdlab.training.validate`) calls
it on every section of a run and on the method's settings before anything is built, and each
builder calls it on the section it builds, so that Python callers get the same sentences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from kdlab.core.domains import Domain

#: the key of a field's :class:`Domain` in ``dataclasses.Field.metadata``
DOMAIN = "domain"


def setting(default: Any = dataclasses.MISSING, *, range: str | None = None,
            choices: Sequence[str] = (), factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with ``default`` (or ``factory`` for a list) whose values must lie
    in ``range`` and/or be one of ``choices``."""
    metadata = {DOMAIN: Domain.parse(range, choices)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def domain_of(f: dataclasses.Field) -> Domain | None:
    """The domain declared on field ``f`` with :func:`setting` (None: none declared)."""
    return f.metadata.get(DOMAIN)


def check_settings(obj: Any, where: str, task: str | None = None) -> None:
    """Raise a UserError for the first setting of dataclass ``obj`` outside its declared
    domain (nested dataclasses too, named ``where.field``), then run ``obj.check(where,
    task)``, the rules between its settings, if it has one. ``task``: the run's task, for
    settings that only some tasks take (None when it is not known)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_settings(value, key, task)
            continue
        domain = domain_of(f)
        if domain is not None:
            domain.check(value, key)
    rules = getattr(obj, "check", None)
    if callable(rules):
        rules(where, task)


__all__ = ["DOMAIN", "Domain", "check_settings", "domain_of", "setting"]

"""Plugins: user modules that register methods, models or datasets.

A plugin is an ordinary Python module whose import registers entries with
``kdlab.methods.METHODS``, ``kdlab.models.MODELS`` or ``kdlab.data.DATASETS``. kdlab loads
plugins from three places:

- ``kdlab --import my_pkg.methods ...`` (a global option, repeatable);
- the ``plugins:`` list of a recipe;
- the ``kdlab.plugins`` entry-point group of installed distributions, e.g. in a plugin's
  ``pyproject.toml``: ``[project.entry-points."kdlab.plugins"] my_methods = "my_pkg.methods"``
  (an entry point may also name a function, ``"my_pkg:register"``, which is called).

A run records the modules it loaded in its ``config.yaml`` (``plugins: [...]``), so that
``kdlab eval``, ``kdlab export`` and ``--resume`` import them again; one that cannot be
imported any more is a UserError that says so.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Sequence

from kdlab.errors import UserError

ENTRY_POINT_GROUP = "kdlab.plugins"


def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def unique(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, in first-seen order."""
    return list(dict.fromkeys(names))


def import_plugin(module: str, *, source: str = "--import") -> None:
    """Import plugin ``module``; an import failure is a UserError naming where it came from."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None)
        why = (f"No module named {missing!r}" if missing and missing != module
               else "it is not installed or not on PYTHONPATH")
        raise UserError(f"Plugin module {module!r} (from {source}) cannot be imported ({why}); "
                        "install it or add its folder to PYTHONPATH.") from None


def load_plugins(modules: Sequence[str], *, source: str = "--import") -> list[str]:
    """Import each of ``modules`` (repeats once); returns them without repeats."""
    modules = unique(modules)
    for module in modules:
        if not isinstance(module, str) or not module.strip():
            raise UserError(f"Plugin {module!r} (from {source}) must be a module name such as "
                            "my_pkg.methods.")
        import_plugin(module, source=source)
    return modules


def load_entry_points() -> list[str]:
    """Load every ``kdlab.plugins`` entry point; returns the modules they name."""
    modules = []
    for ep in _entry_points():
        source = f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP}"
        import_plugin(ep.module, source=source)
        if ep.attr:
            try:
                hook = ep.load()
            except AttributeError:
                raise UserError(f"The {source} names {ep.value!r}, which does not exist; fix "
                                "the plugin's entry point.") from None
            if callable(hook):
                hook()
        modules.append(ep.module)
    return unique(modules)


def startup(imports: Sequence[str]) -> list[str]:
    """What the command line loads before any command: the entry-point plugins, then the
    ``--import`` modules; returns all of them (what a new run records)."""
    return unique([*load_entry_points(), *load_plugins(imports)])

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
import importlib.util
import os
import traceback
from collections.abc import Callable, Iterable, Sequence

from kdlab.core.registry import DuplicateNameError
from kdlab.errors import UserError

ENTRY_POINT_GROUP = "kdlab.plugins"
#: kdlab's own source folder: frames there are not the plugin's
_KDLAB = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def unique(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, in first-seen order."""
    return list(dict.fromkeys(names))


def _plugin_files(module: str) -> tuple[str, ...]:
    """The file of ``module`` (its folder, for a package), for finding its frames."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - finding it imports its parents, which may fail too
        return ()
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isfile(origin):
        return ()
    if spec.submodule_search_locations:  # a package: any file below its folder
        return (os.path.dirname(os.path.abspath(origin)) + os.sep,)
    return (os.path.abspath(origin),)


def _where(err: BaseException, module: str) -> str:
    """``FILE, line N`` where ``err`` arose in the plugin: a syntax error's own place, else
    the innermost traceback frame in the plugin's files, else the innermost one outside kdlab
    and the import machinery."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}, line {err.lineno}"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<frozen")
              and not os.path.abspath(f.filename).startswith(_KDLAB)
              and os.path.abspath(f.filename) != importlib.__file__]
    own = _plugin_files(module)
    mine = [f for f in frames if own and os.path.abspath(f.filename).startswith(own)]
    frame = (mine or frames or [None])[-1]
    return f"{frame.filename}, line {frame.lineno}" if frame is not None else "an unknown place"


def _failure(module: str, source: str, err: BaseException) -> UserError:
    """The one sentence for a plugin whose import (or registration hook) raised ``err``."""
    head = f"Plugin module {module!r} (from {source})"
    where = _where(err, module)
    if isinstance(err, DuplicateNameError):
        return UserError(
            f"{head} registers {err.kind} {err.name!r} in {err.second} ({where}), a name that "
            f"{err.first} already registers; give the plugin's {err.kind} another name.")
    if isinstance(err, SyntaxError):
        return UserError(f"{head} has a syntax error ({err.msg}) at {where}; fix the plugin.")
    if isinstance(err, ImportError):
        missing = getattr(err, "name", None)
        if not missing or missing == module or module.startswith(f"{missing}."):
            return UserError(f"{head} cannot be imported (it is not installed or not on "
                             "PYTHONPATH); install it or add its folder to PYTHONPATH.")
        return UserError(f"{head} cannot be imported (No module named {missing!r}, imported at "
                         f"{where}); install {missing} or fix the plugin.")
    detail = " ".join(str(err).split())[:200]
    what = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    return UserError(f"{head} failed while loading ({what}) at {where}; fix the plugin or "
                     "leave it out.")


def run_plugin_code(module: str, source: str, code: Callable[[], object]) -> None:
    """Run ``code`` (a plugin's import or registration hook); any exception it raises is one
    UserError naming the plugin, where it came from, and its file and line."""
    try:
        code()
    except Exception as err:  # noqa: BLE001 - a plugin may raise anything on import
        raise _failure(module, source, err) from None


def import_plugin(module: str, *, source: str = "--import") -> None:
    """Import plugin ``module``; an import failure (missing module, syntax error, an exception
    on import, a name registered twice) is a UserError naming the plugin and where."""
    run_plugin_code(module, source, lambda: importlib.import_module(module))


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
                run_plugin_code(ep.module, source, hook)
        modules.append(ep.module)
    return unique(modules)


def startup(imports: Sequence[str]) -> list[str]:
    """What the command line loads before any command: the entry-point plugins, then the
    ``--import`` modules; returns all of them (what a new run records)."""
    return unique([*load_entry_points(), *load_plugins(imports)])

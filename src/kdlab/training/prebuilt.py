"""Networks and data given as Python objects: the one seam through which the Trainer takes them.

The command line names every network and dataset in the config, and the Trainer builds them
from the registries. The Python API (:func:`kdlab.distill`) hands over objects instead: a
:class:`Prebuilt` carries the student and teacher views and the data source, and the config
names each part that came this way ``memory:<class name>`` (:func:`memory_name`), so that
``config.yaml`` says where the run's parts came from. The build step
(:func:`kdlab.training.build.build_run`) uses the objects for those names and the registries
for the others.

Such a run cannot be rebuilt from its folder: ``kdlab eval``, ``kdlab export``, ``--resume``
and :func:`kdlab.export.load_exported` refuse it in one sentence (:func:`refuse_memory`) that
points to the Python API; calling :func:`kdlab.distill` again with the same objects and
``resume=True`` continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdlab.errors import UserError

if TYPE_CHECKING:
    from kdlab.core.config import RunConfig
    from kdlab.data.base import DatasetSource
    from kdlab.models.staged.view import Staged

PREFIX = "memory:"


def memory_name(obj: Any) -> str:
    """The name the config records for a network or dataset given as an object: its class
    (a staged view's network's class)."""
    from kdlab.models.staged.view import Staged

    return f"{PREFIX}{type(obj.net if isinstance(obj, Staged) else obj).__name__}"


def is_memory(name: object) -> bool:
    """Whether a config name stands for an object given in memory."""
    return isinstance(name, str) and name.startswith(PREFIX)


def memory_parts(cfg: RunConfig) -> list[str]:
    """The config keys of ``cfg`` whose network or data came from memory."""
    named = (("data", cfg.data.name), ("student", cfg.model.student),
             ("teacher", cfg.model.teacher))
    return [part for part, name in named if is_memory(name)]


def refuse_memory(cfg: RunConfig, doing: str) -> None:
    """A UserError when ``cfg`` has parts given in memory, which ``doing`` (e.g. ``"kdlab
    eval"``) cannot rebuild from the config."""
    parts = memory_parts(cfg)
    if parts:
        named = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
        raise UserError(
            f"This run's {named} came from Python objects (kdlab.distill), which "
            f"{doing} cannot rebuild from its config; continue it with kdlab.distill(..., "
            "resume=True) and the same objects, or load the student's weights from best.pt's "
            "'exported' entry into your own network."
        )


@dataclass
class Prebuilt:
    """The objects of a run whose config names them ``memory:...``.

    ``student`` / ``teacher``: staged views used as they are (the teacher keeps its weights);
    ``data``: a data source whose ``build`` makes the loaders, like a registered
    :class:`~kdlab.data.base.DatasetSource`. A part left ``None`` is built from its name.
    """

    student: Staged | None = None
    teacher: Staged | None = None
    data: DatasetSource | None = None

    def check(self, cfg: RunConfig) -> None:
        """Every ``memory:`` name of ``cfg`` has its object here and every object its name."""
        named = {"data": (cfg.data.name, self.data), "student": (cfg.model.student, self.student),
                 "teacher": (cfg.model.teacher, self.teacher)}
        for part, (name, obj) in named.items():
            if is_memory(name) != (obj is not None):
                raise ValueError(f"the config's {part} {name!r} does not match the given object "
                                 f"({type(obj).__name__})")

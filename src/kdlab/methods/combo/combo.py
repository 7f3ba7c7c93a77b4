"""Several methods' losses at once over one student and one teacher (e.g. kd + rkd)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from kdlab.core.config import build_dataclass
from kdlab.core.settings import check_settings, setting
from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Distiller, Losses


@METHODS.register("combo")
class Combo(Distiller):
    """A weighted sum of registered methods' distillation losses.

    Recipe::

        method:
          name: combo
          parts:
            - {name: kd, temperature: 4}
            - {name: rkd, distance_weight: 25, angle_weight: 50}

    Each part is built with its own options (checked against its Config) over the shared
    student and teacher; the student's and the teacher's features are computed once per step
    and handed to every part's :meth:`~kdlab.methods.base.Distiller.losses`. The label CE is
    counted once, with the combo's ``ce_weight`` (a part may not set its own). Each part's
    extras (projections, memory banks) are submodules of the combo and are trained with it.
    A loss term is named as its part names it, prefixed by the part's name on a clash.
    """

    #: a part that does not support the run's task is refused when the combo is built
    tasks = ("classification", "segmentation")
    uses_stages = False  # itself: logits only; each part is checked when it is built

    @dataclass
    class Config:
        #: default: Hinton KD + RKD (both with their papers' settings)
        parts: list[dict[str, Any]] = field(
            default_factory=lambda: [{"name": "kd"}, {"name": "rkd"}])
        ce_weight: float = setting(1.0, range=">= 0")

        def check(self, where: str, task: str | None = None) -> None:
            """Every part: a combinable method, named once, with valid settings."""
            check_parts(self.parts, _classification_part, task)

    def setup(self) -> None:
        self.parts = nn.ModuleDict()
        for spec in self.cfg.parts:
            options = dict(spec)
            name = options.pop("name")
            if "ce_weight" in METHODS.get(name).Config.__dataclass_fields__:
                options["ce_weight"] = 0.0  # the label CE is counted once, by the combo
            self.parts[name] = build_distiller(name, options, self.student, self.teacher,
                                               train_size=self.train_size, task=self.task)
        self.may_skip_parameters = any(p.may_skip_parameters for p in self.parts.values())

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        """The parts' own optimisers (e.g. SKD's critic), named ``<part>.<name>``."""
        return {f"{name}.{key}": value for name, part in self.parts.items()
                for key, value in part.separate_optimizers().items()}

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        for part in self.parts.values():
            part.set_epoch(epoch, num_epochs)

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        t = self.teacher_features(images) if self.teacher is not None else None
        s = self.task.features(self.student, images, targets)
        losses: Losses = {}
        if self.cfg.ce_weight:
            losses["ce"] = self.cfg.ce_weight * self.task_loss(s, targets)
        self.add_part_losses(losses, s, t, targets, index)
        return s.logits, losses

    def add_part_losses(self, losses: Losses, s: Any, t: Any, targets: Any,
                        index: Tensor | None) -> None:
        """Add every part's terms to ``losses``, prefixed by the part's name on a clash."""
        for name, part in self.parts.items():
            for term, value in part.losses(s, t, targets, index).items():
                losses[term if term not in losses else f"{name}.{term}"] = value


def check_parts(parts: list[dict[str, Any]], part_class: Callable[[str], type],
                task: str | None = None) -> None:
    """Check a combo's ``parts`` list: each names a method once, sets no ``ce_weight`` and
    has valid settings (:func:`~kdlab.core.settings.check_settings`) for the class
    ``part_class(name)`` returns (it raises when the method cannot be a part), in its
    variant for ``task`` when given."""
    if not parts:
        raise UserError("method.parts is empty; list the methods to combine, e.g. "
                        "parts: [{name: kd}, {name: rkd}].")
    seen: set[str] = set()
    for i, spec in enumerate(parts):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"method.parts[{i}] needs a method name, e.g. {{name: kd}}.")
        cls = part_class(name)
        if "ce_weight" in options:
            raise UserError(f"method.parts[{i}] ({name}) sets ce_weight; set it once on the "
                            "combo (method.ce_weight).")
        if name in seen:
            raise UserError(f"method.parts lists {name!r} twice; merge its options.")
        seen.add(name)
        if task is not None:
            cls = cls.for_task(task)
        where = f"method.parts[{i}]"
        check_settings(build_dataclass(cls.Config, options, where=where), where, task)


def _classification_part(name: str) -> type[Distiller]:
    cls = METHODS.get(name)
    if not getattr(cls, "combinable", False) or cls is Combo:
        combinable = [n for n in METHODS.names() if getattr(METHODS.get(n), "combinable", False)]
        raise UserError(f"Method {name!r} cannot be part of a combo; combinable methods: "
                        f"{', '.join(combinable)}.")
    return cls

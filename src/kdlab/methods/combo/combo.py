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
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.teacher_source import FrozenTeacher, TeacherSource


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
    student and teacher; the student's and the teacher's passes run once per step and are
    handed to every part's :meth:`~kdlab.methods.base.Distiller.losses`. A part that runs a
    pass of its own (OFD's pre-activation taps) runs it for all parts, which read the plain
    outputs in it; two such parts cannot share a combo. Parts that set ``teacher_bn`` must
    agree: there is one teacher pass. The label CE is counted once, with the combo's
    ``ce_weight`` (a part may not set its own). Each part's extras (projections, memory
    banks, FCFD's bridges, SKD's critic and its optimiser) are submodules of the combo and are
    trained with it. A loss term is named as its part names it, prefixed by the part's name
    on a clash. Other terms are not merged: a part that carries its own KD term (FCFD's
    ``kd_weight``, its L_kd) beside a ``kd`` part counts KD twice — set one of the two
    weights to 0 unless that is meant. Parts without a ``teacher_bn`` setting read the teacher
    in the mode the others set.

    Every method that distils the student from a frozen teacher can be a part
    (:attr:`~kdlab.methods.base.Distiller.combinable`), but SimKD and FCFD with ``simkd:
    true``, whose student ends in the teacher's classifier.
    """

    #: a part that does not support the run's task is refused when the combo is built
    tasks = ("classification", "segmentation")
    uses_stages = False  # itself: logits only; each part is checked when it is built
    combinable = False  # a combo is not a part of another

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
        for name, part in self.parts.items():
            if next(iter(part.evaluated().values())) is not self.student:
                raise UserError(f"Method {name!r} as set up here trains a student of its own "
                                "making (e.g. FCFD with simkd: true ends in the teacher's "
                                "classifier), which the other parts cannot share; run it on "
                                "its own.")
        self.student_owner = _one_owner(
            "student", [n for n, p in self.parts.items() if p.runs_own_student_pass()])
        self.teacher_owner = _one_owner("teacher", _own_teacher_passes(self.parts))
        self.teacher_reads = ("logits" if all(p.teacher_reads == "logits"
                                              for p in self.parts.values()) else "features")
        assert self._teacher is not None
        self.use_teacher_source(FrozenTeacher(self._teacher, _teacher_bn(self.parts)))

    def use_teacher_source(self, source: TeacherSource) -> None:
        """The combo's source is every part's: they read the one teacher pass."""
        super().use_teacher_source(source)
        for part in self.parts.values():
            part.use_teacher_source(source)

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        """The parts' own optimisers (e.g. SKD's critic), named ``<part>.<name>``."""
        return {f"{name}.{key}": value for name, part in self.parts.items()
                for key, value in part.separate_optimizers().items()}

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        for part in self.parts.values():
            part.set_epoch(epoch, num_epochs)

    def use_train_labels(self, labels: Tensor | None) -> None:
        for part in self.parts.values():
            part.use_train_labels(labels)

    def student_pass(self, batch: Batch) -> Any:
        """The plain student pass, or the pass of the one part that runs its own (OFD's
        pre-activation tap: the plain outputs plus extras)."""
        if self.student_owner is not None:
            return self.parts[self.student_owner].student_pass(batch)
        return super().student_pass(batch)

    def teacher_pass(self, batch: Batch, student: Any) -> Any:
        """The teacher pass every part reads: the features (the logits when every part reads
        only those), or the pass of the parts that run their own (OFD's tap, a detector's ROI
        head on the student's proposals)."""
        if self.teacher_owner is not None:
            return self.parts[self.teacher_owner].teacher_pass(batch, student)
        return super().teacher_pass(batch, student)

    def losses(self, batch: Batch, student: Any, teacher: Any) -> Losses:
        """Every part's terms, prefixed by the part's name on a clash."""
        out: Losses = {}
        for name, part in self.parts.items():
            for term, value in part.losses(batch, student, teacher).items():
                out[term if term not in out and term != "ce" else f"{name}.{term}"] = value
        return out


def _one_owner(which: str, owners: list[str]) -> str | None:
    """The one part whose own ``which`` pass the combo runs for all parts, if any."""
    if len(owners) > 1:
        raise UserError(f"Parts {', '.join(owners)} each run the {which} their own way, but a "
                        f"combo runs one {which} pass for all its parts; keep one of them.")
    return owners[0] if owners else None


def _own_teacher_passes(parts: nn.ModuleDict) -> list[str]:
    """The first part of those whose teacher pass is not the plain one, where they all run the
    same (e.g. every detection part's ROI pass); every such part where they differ."""
    own = {name: type(p).teacher_pass for name, p in parts.items()
           if type(p).teacher_pass is not Distiller.teacher_pass}
    if len(set(own.values())) == 1:
        return [next(iter(own))]
    return list(own)


def _teacher_bn(parts: nn.ModuleDict) -> str:
    """The ``teacher_bn`` mode of the combo's one teacher pass: that of the parts that have
    the setting (:func:`check_parts` makes them agree), else ``eval``."""
    modes = [p.cfg.teacher_bn for p in parts.values() if hasattr(p.cfg, "teacher_bn")]
    return modes[0] if modes else "eval"


def _check_teacher_bn(modes: dict[str, tuple[str, str]]) -> None:
    """The parts' ``teacher_bn`` modes, as ``{"method.parts[i]": (method, mode)}``, agree: a
    combo runs one teacher pass. The refusal names the settings that would make them agree."""
    if len({mode for _, mode in modes.values()}) <= 1:
        return
    (first, (_, mode)), *rest = modes.items()
    given = ", ".join(f"{name}: {m}" for name, m in modes.values())
    change = " and ".join(f"{where}.teacher_bn={mode}" for where, (_, m) in rest if m != mode)
    raise UserError(f"The combo's parts run the teacher's BatchNorm differently ({given}) but "
                    f"share one teacher pass; set {change}, or {first}.teacher_bn to theirs.")


def check_parts(parts: list[dict[str, Any]], part_class: Callable[[str], type],
                task: str | None = None) -> None:
    """Check a combo's ``parts`` list: each names a method once, sets no ``ce_weight`` and
    has valid settings (:func:`~kdlab.core.settings.check_settings`) for the class
    ``part_class(name)`` returns (it raises when the method cannot be a part), in its
    variant for ``task`` when given; the parts that have a ``teacher_bn`` agree on it."""
    if not parts:
        raise UserError("method.parts is empty; list the methods to combine, e.g. "
                        "parts: [{name: kd}, {name: rkd}].")
    seen: set[str] = set()
    teacher_bn: dict[str, tuple[str, str]] = {}
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
        part_cfg = build_dataclass(cls.Config, options, where=where)
        check_settings(part_cfg, where, task)
        if hasattr(part_cfg, "teacher_bn"):
            teacher_bn[where] = (name, part_cfg.teacher_bn)
    _check_teacher_bn(teacher_bn)


def _classification_part(name: str) -> type[Distiller]:
    cls = METHODS.get(name)
    if not getattr(cls, "combinable", False):
        combinable = [n for n in METHODS.names() if getattr(METHODS.get(n), "combinable", False)]
        raise UserError(f"Method {name!r} cannot be part of a combo; combinable methods: "
                        f"{', '.join(combinable)}.")
    return cls

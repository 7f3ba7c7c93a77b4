"""The Distiller: one module per method that returns the student's logits and named losses.

The trainer sums the named losses, logs each one and never branches on a method's name.
A method declares its hyper-parameters as a dataclass ``Config`` (defaults from its reference
code, or its paper where there is none; kdlab's own choices are opt-in settings);
the recipe's ``method:`` block is checked against it, so an unknown key is an error.

One training step is one template, :meth:`Distiller.forward`, written once::

    student = self.student_pass(batch)            # default: the student's plain pass
    teacher = self.teacher_pass(batch, student)   # default: the teacher source's features
    terms = {"ce": ce_weight * task loss of student} + self.losses(batch, student, teacher)

A method implements :meth:`Distiller.losses` (its weighted distillation terms) and overrides a
pass only where it needs more than the plain one (OFD's pre-activations, SimKD's projected
student, FRSKD's self-teacher, DML's peers, online FCFD's trained teacher, a detector's ROI
head on the student's proposals).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from kdlab.errors import UserError
from kdlab.methods.batch import Batch
from kdlab.methods.teacher_source import (
    FrozenTeacher,
    TeacherLogits,
    TeacherSource,
    teacher_bn_context,
)
from kdlab.models.staged.view import Staged
from kdlab.tasks import Task, build_task

Losses = dict[str, Tensor]


@dataclass
class NoConfig:
    """A method without hyper-parameters."""


#: ``Distiller.tasks`` of a method that runs on every task, registered ones and plugins'
ANY_TASK: tuple[str, ...] = ("any",)


class Distiller(nn.Module):
    """Base class: holds the student, its trainable extras and a frozen teacher.

    The teacher is deliberately *not* a submodule: it is not in ``parameters()`` (so the
    optimiser and DistributedDataParallel never see it), not in ``state_dict()`` (a run's
    checkpoint holds what training changes; the teacher comes from its own checkpoint), and
    it stays in eval mode with ``requires_grad=False``. ``.to()``, ``.half()`` and friends
    still reach it through :meth:`_apply`. Its outputs are read through :attr:`teacher_source`
    (:mod:`kdlab.methods.teacher_source`).

    Subclasses set ``Config`` and implement :meth:`losses`; see the module docstring for the
    step they plug into.

    Teacher BatchNorm: a method whose ``Config`` has a ``teacher_bn`` field (choices
    :data:`~kdlab.methods.teacher_source.TEACHER_BN_MODES`, declared on the field) chooses
    how the frozen teacher's BatchNorm layers normalise in its teacher source's passes (and in
    any pass a method runs inside :meth:`teacher_bn_mode`): ``eval`` (running statistics, the
    default) or ``batch`` (the current batch's statistics, as reference code that calls
    ``train()`` on its frozen teacher; the running statistics are left untouched).

    Class flags, each with who reads it (everything else a run needs, it asks the method):

    - ``Config``: the one validation pass (:func:`kdlab.methods.method_config`) and the docs.
    - ``needs_teacher``: the CLI, the API and the run's build: whether a teacher is loaded.
    - ``tasks`` and ``variants``: :meth:`for_task`, which class runs the method on a task.
    - ``uses_stages``: :func:`kdlab.methods.check_stages`, which refuses a network without
      stages (a ViT) before anything is built.
    - ``may_skip_parameters``: the trainer's DDP wrapper (``find_unused_parameters``).
    - ``trains_teacher``: this class only, to hold the given teacher as a trained submodule.
    - ``teacher_reads``: :meth:`teacher_pass` and the teacher-cache check (logits only).
    - ``combinable``: ``combo``'s part check; derived from ``needs_teacher`` unless set.
    """

    Config: type = NoConfig
    #: False for a method without a frozen teacher (plain CE, self- and online distillation)
    needs_teacher: bool = True
    #: The tasks (``kdlab.tasks``) this method can distil; the run's ``task`` must be one.
    #: :data:`ANY_TASK` for a method that reads only what every task's networks have (the
    #: task's own loss, the staged view's stage outputs): it runs on a plugin's task as is.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: False for a method that reads only logits and pooled embeddings: it also distils
    #: networks whose staged view has no stages (timm's ViTs, see kdlab.models.timm).
    uses_stages: ClassVar[bool] = True
    #: Some trainable parameters may get no gradient in a step (e.g. sampled paths); tells
    #: DistributedDataParallel to look for unused parameters.
    may_skip_parameters: bool = False
    #: True for online methods (online FCFD) whose second network is trained with the
    #: student: it is then a submodule ``teacher_net`` (in ``parameters()``, the checkpoint
    #: and DDP), not frozen, and ``self.teacher`` returns it. Such a method has no frozen
    #: teacher (``needs_teacher = False``).
    trains_teacher: ClassVar[bool] = False
    #: What the default :meth:`teacher_pass` asks the teacher source for: ``"features"``
    #: (stage outputs, embedding and logits) or ``"logits"`` (only those, a
    #: :class:`~kdlab.methods.teacher_source.TeacherLogits`: a teacher cache can answer them).
    teacher_reads: ClassVar[str] = "features"
    #: True (derived for every subclass) when the method can be a part of a ``combo``: it
    #: distils the student from the combo's frozen teacher (see :mod:`kdlab.methods.combo`).
    combinable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.trains_teacher and cls.needs_teacher:
            raise TypeError(f"{cls.__name__} trains its teacher, so it has no frozen one: set "
                            "needs_teacher = False.")
        if "combinable" not in cls.__dict__:
            inherited = all(getattr(b, "combinable", True) for b in cls.__bases__)
            cls.combinable = inherited and cls.needs_teacher

    def __init__(
        self,
        student: Staged,
        teacher: Staged | None,
        cfg: object | None = None,
        *,
        train_size: int | None = None,
        task: Task | None = None,
    ) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise UserError(
                f"Method {type(self).__name__} needs a teacher: set model.teacher and "
                "model.teacher_checkpoint (train one first with `kdlab train`)."
            )
        self.student = student
        self.cfg = cfg if cfg is not None else self.Config()
        #: number of training samples (memory-bank methods such as CRD need it)
        self.train_size = train_size
        #: the run's task: its label loss, targets and outputs (kdlab.tasks)
        self.task = task if task is not None else build_task("classification")
        if teacher is not None and self.trains_teacher:
            self.teacher_net = teacher
            teacher = None
        elif teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)
        #: where the frozen teacher's outputs come from (None without a frozen teacher)
        self.teacher_source: TeacherSource | None = (
            FrozenTeacher(teacher, getattr(self.cfg, "teacher_bn", "eval"))
            if teacher is not None else None)
        self.setup()

    def setup(self) -> None:
        """Build the method's own modules (bridges, heads, memory banks) from ``self.student``,
        ``self.teacher``, ``self.cfg`` and ``self.train_size``; called once by ``__init__``."""

    # ----------------------------------------------------------------- teacher handling
    @property
    def teacher(self) -> Staged | None:
        """The frozen teacher, or the network trained alongside (``trains_teacher``)."""
        return self._teacher if not self.trains_teacher else self._modules.get("teacher_net")

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self._teacher is not None:
            self._teacher.eval()
        return self

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn, recurse)
        return self

    def use_teacher_source(self, source: TeacherSource) -> None:
        """Read the frozen teacher's outputs from ``source`` from now on (the trainer hands a
        compiled teacher or a teacher cache here; see :mod:`kdlab.methods.teacher_source`)."""
        if self._teacher is None:
            raise UserError(f"Method {type(self).__name__} has no frozen teacher to read "
                            "from another source; remove data.teacher_cache.")
        self.teacher_source = source

    def teacher_bn_mode(self) -> contextlib.AbstractContextManager[Any]:
        """Context for running the frozen teacher's modules under the method's ``teacher_bn``
        setting (for passes a method runs itself, e.g. FCFD's teacher lens)."""
        return teacher_bn_context(self._teacher, getattr(self.cfg, "teacher_bn", "eval"))

    # ----------------------------------------------------------------- tasks
    #: Classes that run this method on another task, as ``{task: class}``, set beside the
    #: method in its folder's ``__init__`` (e.g. ``kdlab.methods.fcfd``: FCFD on a detector).
    #: Not inherited: a subclass names its own.
    variants: ClassVar[dict[str, type[Distiller]]] = {}

    @classmethod
    def supported_tasks(cls) -> tuple[str, ...]:
        """Every task this method runs on: its own and those of its variants (``any`` for
        :data:`ANY_TASK`)."""
        if tuple(cls.tasks) == ANY_TASK:
            return ANY_TASK
        own = cls.__dict__.get("variants", {})
        return tuple(cls.tasks) + tuple(t for t in own if t not in cls.tasks)

    @classmethod
    def runs_on(cls, task: str) -> bool:
        """Whether this class itself (not a variant) runs on ``task``."""
        return tuple(cls.tasks) == ANY_TASK or task in cls.tasks

    @classmethod
    def supports(cls, task: str) -> bool:
        """Whether this method runs on ``task``, itself or through a variant."""
        return task in cls.__dict__.get("variants", {}) or cls.runs_on(task)

    @classmethod
    def for_task(cls, task: str) -> type[Distiller]:
        """The class that runs this method on ``task``: the method's own variant for that task
        where it names one (:attr:`variants`), else itself where it supports the task."""
        target = cls.__dict__.get("variants", {}).get(task)
        if target is not None:
            return target
        if not cls.runs_on(task):
            raise UserError(f"Method {cls.__name__} does not support task {task!r} (it supports "
                            f"{', '.join(cls.supported_tasks())}); pick a method for {task}, see "
                            "`kdlab list methods`.")
        return cls

    def task_loss(self, out: Any, targets: Any) -> Tensor:
        """The label loss of a network's output for the run's task (CE on labels, pixels,
        or the detector's own losses)."""
        return self.task.loss(out, targets)

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        """Trainable parameters stepped by an optimiser of their own (e.g. SKD's
        discriminator with Adam), by name, with the factory of that optimiser. The trainer
        leaves them out of the run's optimiser and steps each after the same backward; the
        method keeps each loss's gradient on its own side. Each follows the run's LR schedule
        unless its factory sets ``optimizer.kdlab_schedule = "constant"`` on it."""
        return {}

    # ----------------------------------------------------------------- the step
    def forward(self, images: Any, targets: Any,
                index: Tensor | None = None) -> tuple[Any, Losses]:
        """One training step's student outputs and weighted loss terms, by name: the label
        loss ``ce`` (weighted by ``cfg.ce_weight`` where the method has one; left out at 0)
        on the student pass, then :meth:`losses`. Every method runs this template."""
        batch = Batch(images, targets, index)
        student = self.student_pass(batch)
        teacher = self.teacher_pass(batch, student)
        terms: Losses = {}
        ce_weight = getattr(self.cfg, "ce_weight", 1.0)
        if ce_weight:
            terms["ce"] = ce_weight * self.task_loss(student, batch.targets)
        terms.update(self.losses(batch, student, teacher))
        return student.logits, terms

    def student_pass(self, batch: Batch) -> Any:
        """The student's outputs for this step: what the task's loss reads, whose ``logits``
        the trainer reports (default: the task's training pass of the student, a
        :class:`~kdlab.models.staged.view.Features` or a detector's output)."""
        return self.task.features(self.student, batch.images, batch.targets)

    def runs_own_student_pass(self) -> bool:
        """True when this method's :meth:`student_pass` is not the plain one; a ``combo``
        then runs this part's pass for every part."""
        return type(self).student_pass is not Distiller.student_pass

    def teacher_pass(self, batch: Batch, student: Any) -> Any:
        """The teacher's outputs for this step (default: what :attr:`teacher_reads` names,
        from the teacher source; None without a frozen teacher). ``student`` is this step's
        :meth:`student_pass` (a detector's teacher reads its proposals)."""
        source = self.teacher_source
        if source is None:
            return None
        if self.teacher_reads == "logits":
            return TeacherLogits(source.logits(batch))
        return source.features(batch)

    def losses(self, batch: Batch, student: Any, teacher: Any) -> Losses:
        """The method's weighted terms, by name, without the label loss ``ce`` (the template
        adds it): ``student`` and ``teacher`` are this step's passes. ``combo`` calls it with
        the passes it shares among its parts."""
        raise NotImplementedError(f"{type(self).__name__} implements no losses()")

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based); for warm-ups."""

    def use_train_labels(self, labels: Tensor | None) -> None:
        """The class of every training sample by dataset index (or None where the loader
        cannot tell), handed over by the trainer before training; for methods that sample
        by class (CRD's negatives)."""

    def evaluated(self) -> dict[str, nn.Module]:
        """Networks whose accuracy the trainer reports, images -> logits; the first is the
        one that selects the best checkpoint."""
        return {"student": self.student}

    def exported(self) -> dict[str, nn.Module]:
        """Ordinary models written by ``kdlab export`` (plain architectures, no extras)."""
        return {"student": self.student.net}

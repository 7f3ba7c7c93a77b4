"""The Distiller: one module per method that returns the student's logits and named losses.

The trainer sums the named losses, logs each one and never branches on a method's name.
A method declares its hyper-parameters as a dataclass ``Config`` (defaults from its paper);
the recipe's ``method:`` block is checked against it, so an unknown key is an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from kdlab.errors import UserError
from kdlab.models.staged.view import Features, Staged
from kdlab.nn.batch_stats import batch_statistics
from kdlab.tasks import Task, build_task

Losses = dict[str, Tensor]
#: the choices of a method's ``teacher_bn`` setting (see :class:`Distiller`)
TEACHER_BN = ("eval", "batch")


@dataclass
class NoConfig:
    """A method without hyper-parameters."""


class TeacherLogits(Protocol):
    """Where a distiller may read the teacher's logits from instead of running the teacher
    (a :class:`kdlab.data.soft_labels.CachedTeacher`)."""

    def logits(self, index: Tensor) -> Tensor:
        """The teacher's logits ``(B, C)`` for the batch's dataset indices ``index``."""
        ...


def check_teacher_cache_use(method: type[Distiller], cfg: object) -> None:
    """A UserError unless ``method`` with settings ``cfg`` can train from a teacher cache."""
    name = getattr(method, "__name__", str(method))
    if not method.needs_teacher or method.trains_teacher:
        raise UserError(f"Method {name} does not distil from a fixed teacher, so it has no use "
                        "for data.teacher_cache; remove data.teacher_cache.")
    if not method.teacher_logits_only:
        raise UserError(f"Method {name} needs the teacher's features, not only its logits, so it "
                        "cannot train from data.teacher_cache; remove data.teacher_cache or "
                        "use a logit method such as kd or dkd.")
    if getattr(cfg, "teacher_bn", "eval") != "eval":
        raise UserError(f"Method {name} runs the teacher's BatchNorm on batch statistics "
                        "(method.teacher_bn=batch), which a cache of single views cannot "
                        "reproduce; use method.teacher_bn=eval or remove data.teacher_cache.")


class Distiller(nn.Module):
    """Base class: holds the student, its trainable extras and a frozen teacher.

    The teacher is deliberately *not* a submodule: it is not in ``parameters()`` (so the
    optimiser and DistributedDataParallel never see it), not in ``state_dict()`` (a run's
    checkpoint holds what training changes; the teacher comes from its own checkpoint), and
    it stays in eval mode with ``requires_grad=False``. ``.to()``, ``.half()`` and friends
    still reach it through :meth:`_apply`.

    Subclasses set ``Config`` and ``needs_teacher`` and implement :meth:`forward`.

    Teacher BatchNorm: a method whose ``Config`` has a ``teacher_bn`` field (choices
    :data:`TEACHER_BN`, declared on the field) chooses how the
    frozen teacher's BatchNorm layers normalise in the teacher passes below (and in any pass
    a method runs inside :meth:`teacher_bn_mode`): ``eval`` (running statistics, the
    default) or ``batch`` (the current batch's statistics, as reference code that calls
    ``train()`` on its frozen teacher; the running statistics are left untouched).
    """

    Config: type = NoConfig
    needs_teacher: bool = True
    #: The tasks (``kdlab.tasks``) this method can distil; the run's ``task`` must be one.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: False for a method that reads only logits and pooled embeddings: it also distils
    #: networks whose staged view has no stages (timm's ViTs, see kdlab.models.timm).
    uses_stages: ClassVar[bool] = True
    #: Some trainable parameters may get no gradient in a step (e.g. sampled paths); tells
    #: DistributedDataParallel to look for unused parameters.
    may_skip_parameters: bool = False
    #: True for online methods (online FCFD) whose second network is trained with the
    #: student: it is then a submodule ``teacher_net`` (in ``parameters()``, the checkpoint
    #: and DDP), not frozen, and ``self.teacher`` returns it.
    trains_teacher: ClassVar[bool] = False
    #: True for a method whose only use of the teacher is its logits, read through
    #: :meth:`teacher_logits` with the batch's dataset indices: it can train from a teacher
    #: soft-label cache (``data.teacher_cache``, see :meth:`use_teacher_cache`).
    teacher_logits_only: ClassVar[bool] = False
    _teacher_cache: TeacherLogits | None = None

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
        object.__setattr__(self, "_teacher_runner", None)
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

    def use_teacher_runner(self, runner: object | None) -> None:
        """Run the teacher passes below through ``runner`` (an object with ``features(x)``
        and ``runner(x)``, e.g. the separately compiled teacher of ``train.compile``); None
        runs the teacher itself."""
        object.__setattr__(self, "_teacher_runner", runner)

    def teacher_bn_mode(self) -> contextlib.AbstractContextManager[None]:
        """Context for running the frozen teacher under the method's ``teacher_bn`` setting."""
        if self._teacher is not None and getattr(self.cfg, "teacher_bn", "eval") == "batch":
            return batch_statistics(self._teacher)
        return contextlib.nullcontext()

    def teacher_features(self, images: Tensor) -> Features:
        """The frozen teacher's features under ``torch.inference_mode`` (no autograd work).

        The results are cloned out of inference mode so that losses may save them for the
        backward pass; they carry no gradient.
        """
        assert self._teacher is not None, "this method was built without a teacher"
        with torch.inference_mode(), self.teacher_bn_mode():
            out = (self._teacher_runner or self._teacher).features(images)
        return out.map(torch.Tensor.clone)

    def use_teacher_cache(self, cache: TeacherLogits | None) -> None:
        """Read the teacher's logits from ``cache`` (``cache.logits(index)``) instead of
        running the teacher; ``None`` runs the teacher again. Only for methods whose
        :attr:`teacher_logits_only` is true, whose teacher runs in eval mode."""
        if cache is not None:
            check_teacher_cache_use(type(self), self.cfg)
        object.__setattr__(self, "_teacher_cache", cache)

    def teacher_logits(self, images: Tensor, index: Tensor | None = None) -> Tensor:
        """The frozen teacher's logits only (inference mode, cloned like teacher_features).

        With a teacher cache (:meth:`use_teacher_cache`) they are read from it for the dataset
        indices ``index`` (the views the loader gave the student) and the teacher does not run.
        """
        if self._teacher_cache is not None:
            if index is None:
                raise ValueError("a teacher cache needs the batch's dataset indices")
            return self._teacher_cache.logits(index).to(images.device)
        assert self._teacher is not None, "this method was built without a teacher"
        with torch.inference_mode(), self.teacher_bn_mode():
            logits = (self._teacher_runner or self._teacher)(images)
        return logits.clone()

    # ----------------------------------------------------------------- the method
    #: True when the class implements :meth:`losses` (set automatically); such a method
    #: can be part of a ``combo`` and needs no forward of its own.
    combinable: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.combinable = cls.losses is not Distiller.losses

    #: Classes that run this method on another task, as ``{task: class}``, set beside the
    #: method in its folder's ``__init__`` (e.g. ``kdlab.methods.fcfd``: FCFD on a detector).
    #: Not inherited: a subclass names its own.
    variants: ClassVar[dict[str, type[Distiller]]] = {}

    @classmethod
    def supported_tasks(cls) -> tuple[str, ...]:
        """Every task this method runs on: its own and those of its variants."""
        own = cls.__dict__.get("variants", {})
        return tuple(cls.tasks) + tuple(t for t in own if t not in cls.tasks)

    @classmethod
    def for_task(cls, task: str) -> type[Distiller]:
        """The class that runs this method on ``task``: the method's own variant for that task
        where it names one (:attr:`variants`), else itself where it supports the task."""
        target = cls.__dict__.get("variants", {}).get(task)
        if target is not None:
            return target
        if task not in cls.tasks:
            raise UserError(f"Method {cls.__name__} does not support task {task!r} (it supports "
                            f"{', '.join(cls.supported_tasks())}); pick a method for {task}, see "
                            "`kdlab list methods`.")
        return cls

    def task_loss(self, out: Features, targets: Tensor) -> Tensor:
        """The label loss of a network's output for the run's task (CE on labels, pixels,
        or the detector's own losses)."""
        return self.task.loss(out, targets)

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        """Trainable parameters stepped by an optimiser of their own (e.g. SKD's
        discriminator with Adam), by name, with the factory of that optimiser. The trainer
        leaves them out of the run's optimiser and steps each after the same backward; the
        method keeps each loss's gradient on its own side."""
        return {}

    def forward(
        self, images: Tensor, targets: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Losses]:
        """Return the student's logits and the weighted loss terms, by name.

        The default serves every method that implements :meth:`losses`: one student pass,
        one teacher pass (inference mode), the label CE weighted by ``cfg.ce_weight``, then
        the method's own terms. Methods that need something else override it.
        """
        if not self.combinable:
            raise NotImplementedError(f"{type(self).__name__} implements neither forward() "
                                      "nor losses()")
        t = self.teacher_features(images) if self._teacher is not None else None
        s = self.task.features(self.student, images, targets)
        out: Losses = {}
        ce_weight = getattr(self.cfg, "ce_weight", 1.0)
        if ce_weight:
            out["ce"] = ce_weight * self.task_loss(s, targets)
        out.update(self.losses(s, t, targets, index))
        return s.logits, out

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        """The method's distillation terms (weighted, without the label CE) from features
        computed once elsewhere: the default forward and ``combo`` call it."""
        raise NotImplementedError(f"{type(self).__name__} has no losses() hook")

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based); for warm-ups."""

    def evaluated(self) -> dict[str, nn.Module]:
        """Networks whose accuracy the trainer reports, images -> logits; the first is the
        one that selects the best checkpoint."""
        return {"student": self.student}

    def exported(self) -> dict[str, nn.Module]:
        """Ordinary models written by ``kdlab export`` (plain architectures, no extras)."""
        return {"student": self.student.net}

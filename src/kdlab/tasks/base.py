"""The task layer: what differs between classification, segmentation and detection.

A :class:`Task` owns the target format, the label loss, the training score, the evaluation
metric and what a network's forward pass returns for that task. The trainer, checkpoints,
logs and CLI ask the run's task and never branch on its name; a Distiller holds the task of
its run (``distiller.task``) and computes its label loss with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlab.core.config import build_dataclass
from kdlab.core.registry import Registry
from kdlab.core.settings import check_settings
from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec


@dataclass
class NoOptions:
    """The settings of a task that has none of its own."""


class Task:
    """One task. Subclasses set :attr:`name`, :attr:`primary` and implement the hooks.

    ``ignore_index`` is the target value that no loss or metric counts (segmentation's 255);
    ``None`` where the task has none. ``class_names``: the name of each target label, indexed
    by its value (``DatasetInfo.class_names``; for the report's pictures), or None.
    """

    name: ClassVar[str]
    #: the validation metric (a key of :meth:`evaluate`'s result) that selects ``best.pt``;
    #: larger is better
    primary: ClassVar[str]
    #: the training-score column of ``metrics.csv`` (``train_<name>``), or None
    train_score_name: ClassVar[str | None] = None
    #: the task's own settings (a run's ``task_options``): a dataclass whose fields declare
    #: the values they accept (:mod:`kdlab.core.settings`) and name keyword arguments of
    #: ``__init__``
    Options: ClassVar[type] = NoOptions

    def __init__(self, ignore_index: int | None = None, *,
                 num_classes: int | None = None,
                 class_names: tuple[str, ...] | None = None) -> None:
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.class_names = class_names

    def label_name(self, label: int) -> str:
        """The name of target label ``label`` (its number where none is known)."""
        names = self.class_names or ()
        return names[label] if 0 <= label < len(names) else str(label)

    # ----------------------------------------------------------------- a training step
    def features(self, net: nn.Module, images: Any, targets: Any) -> Any:
        """One forward pass of ``net`` for a training step (a ``Features`` for staged
        networks); detection networks also need the targets to sample their proposals."""
        return net.features(images)

    def loss(self, out: Any, targets: Any) -> Tensor:
        """The label loss of a network's output ``out`` (what :meth:`features` returned)."""
        raise NotImplementedError

    def batch_size(self, targets: Any) -> int:
        """The number of samples (images) of a batch, from its targets."""
        return int(targets.shape[0]) if isinstance(targets, Tensor) else len(targets)

    def example_targets(self, batch: int, num_classes: int, size: tuple[int, int],
                        generator: torch.Generator, device: torch.device | str) -> Any:
        """Random targets of this task's format for ``batch`` images of ``size`` (H, W),
        drawn from ``generator`` (benchmarks and tests)."""
        raise NotImplementedError

    def train_counts(self, outputs: Any, targets: Any) -> Tensor | None:
        """``[hits, total]`` (float64) of the training score for one batch, or None where
        the task has no cheap training score; summed over steps and ranks by the trainer."""
        return None

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, net: nn.Module, loader: Iterable[Any], *, device: torch.device,
                 amp: str = "none") -> dict[str, float]:
        """The metrics of ``net`` (images -> outputs) over ``loader``, reduced over ranks;
        the result holds :attr:`primary`."""
        raise NotImplementedError

    def report_figures(self, out_dir: Any, networks: dict[str, nn.Module], loader: Any, *,
                       device: torch.device) -> list[str]:
        """Pictures for the run report (file names written into ``out_dir``); none by
        default."""
        return []

    # ----------------------------------------------------------------- deployment
    def deploy(self, net: nn.Module, input_shape: tuple[int, ...]) -> DeploySpec:
        """``net`` (an exported network, eval mode) as the graph ``kdlab export`` writes for
        images of ``input_shape`` ``(C, H, W)``: see :mod:`kdlab.tasks.deploy`."""
        raise NotImplementedError(f"task {self.name!r} has no deployable graph")


TASKS: Registry[type[Task]] = Registry("task", filled_by=("kdlab.tasks",))


def build_task(name: str, ignore_index: int | None = None, *, num_classes: int | None = None,
               options: Mapping[str, Any] | None = None,
               class_names: tuple[str, ...] | None = None) -> Task:
    """The registered task ``name`` (an unknown name suggests close ones) for data with
    ``num_classes`` classes whose targets use ``ignore_index``; ``options`` are the task's own
    settings (a run's ``task_options``, e.g. segmentation's ``aux_weight`` or ``window``),
    checked against its :attr:`Task.Options` (:func:`~kdlab.core.settings.check_settings`);
    ``class_names`` name the target labels (the report's pictures).

    A task whose options declare ``ignore_index`` (segmentation) takes the label value its
    loss and metrics leave out instead of the dataset's, whose own value (padding, unlabelled
    pixels) is then left out too, as ``void_index``."""
    cls = TASKS.get(name)
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"Unknown task_options {', '.join(unknown)} for task {name!r}; it takes "
                        f"{', '.join(known) or 'none'}.")
    chosen = build_dataclass(cls.Options, options, where="task_options")
    check_settings(chosen, "task_options", name)
    given = {key: getattr(chosen, key) for key in options}  # the others keep __init__'s defaults
    kwargs: dict[str, Any] = {"ignore_index": ignore_index, "num_classes": num_classes}
    if "ignore_index" in given:
        kwargs = {**kwargs, "ignore_index": given.pop("ignore_index"), "void_index": ignore_index}
    task = cls(**kwargs, **given)
    if class_names is not None:
        task.class_names = tuple(class_names)
    return task

"""The task layer: what differs between classification, segmentation and detection.

A :class:`Task` owns the target format, the label loss, the training score, the evaluation
metric and what a network's forward pass returns for that task. The trainer, checkpoints,
logs and CLI ask the run's task and never branch on its name; a Distiller holds the task of
its run (``distiller.task``) and computes its label loss with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlab.core.registry import Registry
from kdlab.errors import UserError


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


TASKS: Registry[type[Task]] = Registry("task", filled_by=("kdlab.tasks",))


def build_task(name: str, ignore_index: int | None = None, *, num_classes: int | None = None,
               options: Mapping[str, Any] | None = None,
               class_names: tuple[str, ...] | None = None) -> Task:
    """The registered task ``name`` (an unknown name suggests close ones) for data with
    ``num_classes`` classes whose targets use ``ignore_index``; ``options`` are the task's own
    settings (a run's ``task_options``, e.g. segmentation's ``aux_weight`` or ``window``);
    ``class_names`` name the target labels (the report's pictures).

    A task that takes a ``void_index`` (segmentation) also takes ``ignore_index`` as an option:
    the label value its loss and metrics leave out instead of the dataset's, whose own value
    (padding, unlabelled pixels) is then left out too, as ``void_index``."""
    cls = TASKS.get(name)
    options = dict(options or {})
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"ignore_index": ignore_index, "num_classes": num_classes,
                              "class_names": class_names}
    if "ignore_index" in options and "void_index" in params:
        chosen = options.pop("ignore_index")
        if isinstance(chosen, bool) or not isinstance(chosen, int):
            raise UserError(f"task_options.ignore_index must be an integer label value, got "
                            f"{chosen!r}.")
        kwargs = {**kwargs, "ignore_index": chosen, "void_index": ignore_index}
    known = [p for p in params if p not in ("ignore_index", "num_classes", "void_index",
                                              "class_names")]
    if "void_index" in params:
        known.append("ignore_index")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"Unknown task_options {', '.join(unknown)} for task {name!r}; it takes "
                        f"{', '.join(known) or 'none'}.")
    return cls(**kwargs, **options)

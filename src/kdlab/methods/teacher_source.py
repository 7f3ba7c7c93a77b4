"""Where a method's teacher outputs come from: its teacher source.

A :class:`~kdlab.methods.base.Distiller` reads its frozen teacher only through one object, its
``teacher_source``, which the trainer may replace (:meth:`Distiller.use_teacher_source`):

- :class:`FrozenTeacher` (the default): the network itself, run under ``torch.inference_mode``
  with the method's ``teacher_bn`` mode, optionally through a separately compiled runner
  (``train.compile``, :mod:`kdlab.training.compiling`);
- the soft-label cache of ``data.teacher_cache``
  (:class:`kdlab.data.soft_labels.CachedTeacher`): the teacher's stored logits, read by the
  batch's dataset indices. It holds nothing else, so it refuses :meth:`TeacherSource.features`
  and :meth:`TeacherSource.network` with a one-sentence :class:`~kdlab.errors.UserError`: a
  method cannot silently run the teacher while a cache stands in for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from kdlab.methods.batch_stats import batch_statistics

if TYPE_CHECKING:
    from kdlab.methods.batch import Batch
    from kdlab.models.staged.view import Features

#: the ``teacher_bn`` modes: running statistics, or the batch's (the teacher is left untouched)
TEACHER_BN_MODES = ("eval", "batch")


class TeacherSource(Protocol):
    """What a distiller may ask about its frozen teacher on a batch."""

    def features(self, batch: Batch) -> Features:
        """Every stage output, the embedding and the logits, carrying no gradient."""
        ...

    def logits(self, batch: Batch) -> Tensor:
        """The logits only, carrying no gradient."""
        ...

    def network(self) -> nn.Module:
        """The frozen network, for a pass the method runs itself (e.g. a detector's ROI head
        on the student's proposals)."""
        ...


@dataclass
class TeacherLogits:
    """The outcome of a teacher pass that asks for the logits only (``teacher_reads =
    "logits"``); it has no stages or embedding to read by mistake."""

    logits: Tensor


def teacher_bn_context(net: nn.Module | None, mode: str) -> contextlib.AbstractContextManager[Any]:
    """Context for running the frozen teacher ``net`` with ``teacher_bn`` ``mode``: ``batch``
    normalises with the batch's statistics (the running ones stay untouched), ``eval`` with
    the running statistics (nothing to do)."""
    if net is not None and mode == "batch":
        return batch_statistics(net)
    return contextlib.nullcontext()


class FrozenTeacher:
    """The frozen teacher network as a source: inference mode, the method's ``teacher_bn``
    mode, and results cloned out of inference mode so that losses may save them for the
    backward pass (they carry no gradient). ``runner`` (an object with ``features(x)`` and
    ``runner(x)``, e.g. the compiled teacher of ``train.compile``) runs the passes instead of
    the network itself."""

    def __init__(self, net: nn.Module, bn: str = "eval", runner: Any = None) -> None:
        self.net, self.bn, self.runner = net, bn, runner

    def with_runner(self, runner: Any) -> FrozenTeacher:
        """The same teacher and mode, its passes run through ``runner``."""
        return FrozenTeacher(self.net, self.bn, runner)

    def bn_mode(self) -> contextlib.AbstractContextManager[Any]:
        return teacher_bn_context(self.net, self.bn)

    def network(self) -> nn.Module:
        return self.net

    def features(self, batch: Batch) -> Features:
        with torch.inference_mode(), self.bn_mode():
            out = (self.runner or self.net).features(batch.images)
        return out.map(torch.Tensor.clone)

    def logits(self, batch: Batch) -> Tensor:
        with torch.inference_mode(), self.bn_mode():
            logits = (self.runner or self.net)(batch.images)
        return logits.clone()

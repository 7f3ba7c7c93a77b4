"""A task's network as it is deployed: the graph ``kdlab export`` writes and how to check it.

:meth:`kdlab.tasks.Task.deploy` returns a :class:`DeploySpec`: the module whose forward
(one ``images`` tensor in, a tuple of named tensors out) is captured by ``torch.export`` and
written as ONNX or ``.pt2``, which input dimensions stay free in the graph, a one-line
description of what the graph takes and returns, a context that makes the capture possible
(detection swaps in torchvision functions free of data-dependent Python branches), and the
comparison of the exported graph's outputs with the PyTorch network's.

Outputs are compared by :func:`max_abs_differences` (element-wise) unless the task pairs
them otherwise (detections: :mod:`kdlab.tasks.detection.deploy`). A structural difference
(other shapes, an unpaired detection) raises :class:`OutputMismatch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from torch import Tensor, nn


class OutputMismatch(ValueError):
    """The exported graph's outputs differ from the network's in structure (shape, count)."""


def as_outputs(out: object) -> tuple[Tensor, ...]:
    """A module's result as a tuple of tensors (a single tensor becomes a 1-tuple)."""
    if isinstance(out, Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(t, Tensor) for t in out):
        return tuple(out)
    raise TypeError(f"a deployable module returns tensors, not {type(out).__name__}")


def max_abs_differences(names: Sequence[str], reference: Sequence[Tensor],
                        exported: Sequence[Tensor]) -> dict[str, float]:
    """``{name: max |reference - exported|}`` of outputs of equal shapes, element by element;
    other shapes (or counts) are an :class:`OutputMismatch`."""
    if len(reference) != len(exported):
        raise OutputMismatch(f"{len(exported)} outputs instead of {len(reference)}")
    out = {}
    for name, ref, got in zip(names, reference, exported):
        if tuple(ref.shape) != tuple(got.shape):
            raise OutputMismatch(f"{name} has shape {tuple(got.shape)} instead of "
                                 f"{tuple(ref.shape)}")
        diff = (ref.double() - got.double()).abs()
        out[name] = float(diff.max()) if diff.numel() else 0.0
    return out


@dataclass(frozen=True)
class DeploySpec:
    """How a task deploys one network (see the module docstring).

    ``module``: images -> a tensor or a tuple of tensors named ``outputs``, in eval mode.
    ``dynamic``: input dimension -> (name, smallest size) of the dimensions the graph leaves
    free; the others are fixed to the example's. ``batch``: the fixed number of images per
    call when the batch dimension is not free (detection: 1), else None. ``signature``: what
    the graph takes and returns, for people. ``capture``: a context entered around
    ``torch.export``. ``compare(names, reference, exported)``: ``{output: max abs
    difference}``.
    """

    module: nn.Module
    outputs: tuple[str, ...]
    dynamic: Mapping[int, tuple[str, int]]
    signature: str
    batch: int | None = None
    capture: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    compare: Callable[[Sequence[str], Sequence[Tensor], Sequence[Tensor]],
                      dict[str, float]] = field(default=max_abs_differences)

    def example(self, images: Tensor) -> Tensor:
        """The capture's example input: ``images`` cut to the fixed batch, if any."""
        return images[: self.batch] if self.batch is not None else images

"""``torch.export`` of a task's deployable graph, with the dimensions the task leaves free.

Both deployable formats start here: ``.pt2`` saves the captured program, ONNX is translated
from it by ``torch.onnx`` (``dynamo=True``). A capture that fails is a
:class:`~kdlab.errors.UserError` naming the network and torch's first line.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec

#: the name of the graph's one input
INPUT = "images"


def dynamic_shapes(spec: DeploySpec) -> tuple[dict[int, Any]] | None:
    """``torch.export`` dimension objects for the spec's free input dimensions (None: all
    fixed)."""
    if not spec.dynamic:
        return None
    return ({dim: torch.export.Dim(name, min=low) for dim, (name, low) in spec.dynamic.items()},)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without the warnings torch and torchvision print while they trace (deprecations of
    their own internals, nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def capture_example(spec: DeploySpec, images: Tensor) -> Tensor:
    """The example input a capture traces: the spec's fixed batch, or at least two images
    when the batch is free (a batch of one would be taken for a constant)."""
    example = spec.example(images)
    if spec.batch is None and len(example) < 2:
        example = torch.cat([example, example])
    return example


def failed(what: str, label: str, error: Exception) -> UserError:
    """The UserError of a capture or translation that raised ``error``."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return UserError(f"{what} of {label} failed ({type(error).__name__}: {first[:300]}); "
                     "this network cannot be exported in that format with this torch, "
                     "keep the .safetensors export.")


def export_program(spec: DeploySpec, images: Tensor, label: str
                   ) -> torch.export.ExportedProgram:
    """The spec's module captured by ``torch.export`` on an example from ``images``."""
    example = capture_example(spec, images)
    try:
        with spec.capture(), torch.no_grad(), quiet():
            return torch.export.export(spec.module, (example,),
                                       dynamic_shapes=dynamic_shapes(spec))
    except Exception as e:  # torch raises many types here; each is the user's answer
        raise failed("torch.export", label, e) from None

"""One training step, the same for a training run (:class:`kdlab.training.trainer.Trainer`) and
for ``kdlab bench`` (:mod:`kdlab.tools.bench`): the distiller's forward under autocast
(``train.amp``), the loss terms summed in float32, one backward through the AMP grad scaler and
a step of every optimiser, the method's own (e.g. SKD's critic) included
(:meth:`kdlab.training.optimisation.Optimisation.step`). Under ``train.compile`` the step runs
through :meth:`~kdlab.training.compiling.CompiledModel.step`, which reruns a first step that
fails to compile eagerly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.runtime.precision import autocast
from kdlab.training.compiling import CompiledModel
from kdlab.training.optimisation import Optimisation

Step = tuple[Any, dict[str, torch.Tensor], torch.Tensor]


def forward_losses(model: nn.Module, images: Any, targets: Any, index: Any, *,
                   device: torch.device, amp: str, method: str = "the method") -> Step:
    """The forward half of a step: ``(outputs, loss terms, their float32 sum)``."""
    with autocast(device, amp):
        outputs, losses = model(images, targets, index)
    if not isinstance(losses, dict) or not losses:
        raise UserError(f"Method {method!r} returned no loss terms; it must return "
                        "(outputs, {name: loss}).")
    total = sum(v.float() for v in losses.values())
    assert isinstance(total, torch.Tensor)
    return outputs, losses, total


def train_step(model: nn.Module, optim: Optimisation, images: Any, targets: Any, index: Any,
               *, device: torch.device, amp: str, method: str = "the method") -> Step:
    """One training step of ``model`` (the distiller, or its DDP or compiled wrapper): forward,
    backward and every optimiser's step; returns the forward's outputs, terms and total."""
    def run(m: nn.Module) -> Step:
        step = forward_losses(m, images, targets, index, device=device, amp=amp, method=method)
        optim.step(step[2])
        return step

    if isinstance(model, CompiledModel):
        return model.step(run, device)
    return run(model)

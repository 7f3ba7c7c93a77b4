"""An exported graph run on real validation images and compared with the PyTorch network.

The check feeds the graph the inputs a deployment would: with a free batch, all the images
as one batch and the first image alone (so the free dimension is exercised); with a fixed
batch (detection), each image in its own call. Each output's largest absolute difference
over the calls (paired as the task says: :class:`~kdlab.tasks.deploy.DeploySpec.compare`)
must be at most ``tolerance`` times the output's scale, ``max(1, max |PyTorch output|)``:
float32 kernels of two runtimes sum in other orders, so logits of size 20 may differ by a few
1e-6 where probabilities differ by 1e-7. A structural difference (shape, number of
detections) fails whatever the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec, OutputMismatch, as_outputs

#: the default relative tolerance of the check (see the module docstring)
TOLERANCE = 1e-4


@dataclass
class Check:
    """The largest difference and the scale of every output over the check's calls."""

    differences: dict[str, float]
    scales: dict[str, float]
    images: int
    calls: list[int]  # images per call

    def worst(self) -> tuple[str, float]:
        """(output, difference / scale) of the output furthest from PyTorch's."""
        name = max(self.differences, key=lambda k: self.differences[k] / self.scales[k])
        return name, self.differences[name] / self.scales[name]

    def describe(self) -> str:
        """e.g. ``max abs difference logits 2.4e-07 (scale 11.3) on 8 validation images,
        batches 8 and 1``."""
        diffs = ", ".join(f"{k} {v:.2g} (scale {self.scales[k]:.3g})"
                          for k, v in self.differences.items())
        batches = sorted(set(self.calls), reverse=True)
        how = (f"batches {' and '.join(map(str, batches))}" if len(batches) > 1
               else f"{len(self.calls)} call(s) of {batches[0]}")
        return f"max abs difference {diffs} on {self.images} validation images, {how}"


def check_inputs(spec: DeploySpec, images: Sequence[Tensor]) -> list[Tensor]:
    """The calls of the check (see the module docstring); ``images`` are ``(C, H, W)``.
    With a fixed batch only images of the first one's size are used (the graph's size)."""
    if spec.batch is None:
        batch = torch.stack(list(images))
        return [batch, batch[:1]] if len(batch) > 1 else [batch]
    size = images[0].shape
    same = [im for im in images if im.shape == size]
    return [torch.stack(same[i:i + spec.batch]) for i in range(0, len(same), spec.batch)]


def compare(spec: DeploySpec, run: Callable[[Tensor], Any],
            images: Sequence[Tensor]) -> Check:
    """Run the exported graph ``run`` and the PyTorch module on the check's inputs."""
    diffs: dict[str, float] = dict.fromkeys(spec.outputs, 0.0)
    scales: dict[str, float] = dict.fromkeys(spec.outputs, 1.0)
    calls = check_inputs(spec, images)
    for x in calls:
        with torch.inference_mode():
            reference = as_outputs(spec.module(x))
            got = tuple(t.to(reference[0].device) for t in as_outputs(run(x)))
        for name, value in spec.compare(spec.outputs, reference, got).items():
            diffs[name] = max(diffs[name], value)
        for name, ref in zip(spec.outputs, reference):
            if ref.numel():
                scales[name] = max(scales[name], float(ref.double().abs().max()))
    used = len(calls[0]) if spec.batch is None else sum(len(x) for x in calls)
    return Check(diffs, scales, used, [len(x) for x in calls])


def verify(spec: DeploySpec, run: Callable[[Tensor], Any],
           images: Sequence[Tensor], *, tolerance: float, what: str) -> Check:
    """:func:`compare`, and a UserError naming ``what`` when the outputs differ in
    structure or by more than ``tolerance`` times their scale."""
    try:
        result = compare(spec, run, images)
    except OutputMismatch as e:
        raise UserError(f"{what} does not reproduce the PyTorch network on the validation "
                        f"images: {e}; it was not written.") from None
    name, relative = result.worst()
    if not relative <= tolerance:  # NaN fails too
        raise UserError(
            f"{what} differs from the PyTorch network by {result.differences[name]:.3g} in "
            f"{name} (scale {result.scales[name]:.3g}: {relative:.2g} relative, tolerance "
            f"{tolerance:g}); it was not written. Raise --tolerance if that is acceptable.")
    return result


def validation_images(loader: Any, count: int) -> list[Tensor]:
    """The first ``count`` validation images ``(C, H, W)`` of ``loader`` (fewer when the
    split is smaller), on the CPU."""
    images: list[Tensor] = []
    for batch in loader:
        images += [im.cpu() for im in batch[0]][: count - len(images)]
        if len(images) >= count:
            break
    if not images:
        raise UserError("The run's validation split holds no image to check the export on; "
                        "check data.* in its config.yaml.")
    return images

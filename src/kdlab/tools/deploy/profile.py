"""The measurements of ``kdlab profile``: one network as its task deploys it, on this machine.

For each :class:`Subject` (a teacher or a student, its deployed graph
:class:`~kdlab.tasks.deploy.DeploySpec` and validation images), :func:`measure` gives

- ``params``, ``gflop`` (per image) and ``size_mb`` (its safetensors weights) of the deployed
  graph (:mod:`kdlab.training.model_cost`);
- ``activation_mib``: the peak activation memory of one image's forward pass
  (:mod:`kdlab.tools.deploy.activation_memory`);
- latency (:mod:`kdlab.tools.deploy.timing`) at batch 1 and at the throughput batch ``batch``:
  the median of every timed call over ``rounds`` rounds in which the networks take turns
  (``warmup`` untimed, then ``repeats`` timed calls each), in eager PyTorch (eval mode,
  ``torch.inference_mode``) and, when ONNX is on, in onnxruntime (CPU provider, the same
  intra-op threads) on the ONNX file written and verified for it
  (:func:`kdlab.tools.deploy.write.write_verified`); a graph with a fixed batch of one
  (detection) is called ``batch`` times for the throughput batch;
- the task's ``score`` as the run recorded it.

Timing inputs are real validation images (repeated to fill the batch), so that a detector's
data-dependent post-processing costs what it costs on real data.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdlab.tasks.deploy import DeploySpec
from kdlab.tools.deploy.activation_memory import peak_activation_bytes
from kdlab.tools.deploy.timing import time_calls
from kdlab.training.model_cost import forward_gflop, parameter_count, safetensors_bytes

MB = 1e6
MIB = 2**20


@dataclass
class Subject:
    """One network to profile (see the module docstring)."""

    label: str
    role: str  # "teacher" or "student"
    model: str
    task: str
    spec: DeploySpec
    images: list[Tensor]  # validation images (C, H, W), on the CPU
    metric: str
    score: float | None
    metadata: dict[str, str] = field(default_factory=dict)  # written into its ONNX file
    teacher: str | None = None  # the label of the teacher it was distilled from
    run: str = ""


@dataclass
class Settings:
    """How the networks are timed (``timing``; :func:`time_in_rounds`) and whether they are
    exported to ONNX (``onnx_dir``)."""

    batch: int = 32
    warmup: int = 5
    repeats: int = 10
    rounds: int = 3
    threads: int = 1
    timing: bool = True
    onnx_dir: Path | None = None  # None: no onnxruntime columns
    tolerance: float = 1e-4
    verify_images: int = 8


def file_name(label: str) -> str:
    """A file name for a network label (``runs/kd`` -> ``runs_kd``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "network"


def _inputs(spec: DeploySpec, images: list[Tensor], batch: int) -> tuple[Tensor, list[Tensor]]:
    """(one image as a batch of one, the calls of one throughput batch)."""
    same = [im for im in images if im.shape == images[0].shape]
    filled = [same[i % len(same)] for i in range(batch)]
    if spec.batch is None:
        return same[0][None], [torch.stack(filled)]
    return same[0][None], [im[None] for im in filled]


def _series(run: Callable[[Tensor], Any], one: Tensor, calls: list[Tensor], prefix: str
            ) -> dict[str, Callable[[], None]]:
    """The two timed calls of one runtime: one image, and one throughput batch."""
    def b1() -> None:
        run(one)

    def batch() -> None:
        for x in calls:
            run(x)

    return {f"{prefix}_b1_ms": b1, f"{prefix}_batch_ms": batch}


@dataclass
class Measured:
    """A network's counts (``row``) and the calls still to be timed (``timed``)."""

    row: dict[str, Any]
    timed: dict[str, Callable[[], None]]


def measure(subject: Subject, settings: Settings) -> Measured:
    """Count one network and export it (see the module docstring); the latency calls are
    returned for :func:`time_in_rounds` (eager ones when ``settings.timing``, onnxruntime
    ones with ``settings.onnx_dir`` too)."""
    spec, images = subject.spec, subject.images
    one, calls = _inputs(spec, images, settings.batch)
    net = spec.module.eval()
    row: dict[str, Any] = {
        "network": subject.label, "role": subject.role, "teacher": subject.teacher or "",
        "model": subject.model, "task": subject.task, "metric": subject.metric,
        "score": subject.score, "params": parameter_count(net),
        "gflop": forward_gflop(net, one),
        "activation_mib": peak_activation_bytes(net, one) / MIB,
        "size_mb": safetensors_bytes(net) / MB, "batch": settings.batch,
        "threads": settings.threads, "run": subject.run,
    }
    timed: dict[str, Callable[[], None]] = {}
    if settings.timing:
        def eager(x: Tensor) -> Any:
            with torch.inference_mode():
                return net(x)

        timed.update(_series(eager, one, calls, "eager"))
    if settings.onnx_dir is not None:
        from kdlab.tools.deploy.onnx_format import OnnxRunner
        from kdlab.tools.deploy.write import write_verified

        path = Path(settings.onnx_dir) / f"{file_name(subject.label)}.onnx"
        check = write_verified("onnx", spec, images[: settings.verify_images], path,
                               subject.metadata, label=subject.label,
                               tolerance=settings.tolerance)
        row["onnx_mb"] = path.stat().st_size / MB
        row["onnx_check"] = check.describe()
        if settings.timing:
            timed.update(_series(OnnxRunner(path, threads=settings.threads), one, calls, "ort"))
    return Measured(row, timed)


def time_in_rounds(measured: list[Measured], settings: Settings) -> None:
    """Time every network's calls, the networks taking turns for ``settings.rounds`` rounds
    (each round: ``warmup`` untimed then ``repeats`` timed calls per series), so that a
    drift of the machine's load reaches every network alike; each series' latency is the
    median over all its timed calls, and images/s the throughput batch over its median."""
    samples: list[dict[str, list[float]]] = [{k: [] for k in m.timed} for m in measured]
    for _ in range(settings.rounds):
        for m, times in zip(measured, samples):
            for key, call in m.timed.items():
                times[key] += time_calls(call, warmup=settings.warmup,
                                         repeats=settings.repeats).samples
    for m, times in zip(measured, samples):
        for key, values in times.items():
            m.row[key] = statistics.median(values)
            if key.endswith("_batch_ms"):
                m.row[key.replace("_batch_ms", "_images_per_s")] = (
                    1000 * settings.batch / m.row[key])

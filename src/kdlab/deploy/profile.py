"""The measurements of ``kdlab profile``: one network as its task deploys it, on this machine.

For each :class:`Subject` (a teacher or a student, its deployed graph
:class:`~kdlab.tasks.deploy.DeploySpec` and validation images), :func:`measure` gives

- ``params``, ``gflop`` (per image) and ``size_mb`` (its safetensors weights) of the deployed
  graph (:mod:`kdlab.engine.model_cost`);
- ``activation_mib``: the peak activation memory of one image's forward pass
  (:mod:`kdlab.deploy.activation_memory`);
- latency (:mod:`kdlab.deploy.timing`, median of ``repeats`` calls after ``warmup``) at
  batch 1 and at the throughput batch ``batch``, in eager PyTorch (eval mode,
  ``torch.inference_mode``) and, when ONNX is on, in onnxruntime (CPU provider, the same
  intra-op threads) on the ONNX file written and verified for it
  (:func:`kdlab.deploy.write.write_verified`); a graph with a fixed batch of one
  (detection) is called ``batch`` times for the throughput batch;
- the task's ``score`` as the run recorded it.

Timing inputs are real validation images (repeated to fill the batch), so that a detector's
data-dependent post-processing costs what it costs on real data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdlab.deploy.activation_memory import peak_activation_bytes
from kdlab.deploy.timing import time_calls
from kdlab.engine.model_cost import forward_gflop, parameter_count, safetensors_bytes
from kdlab.tasks.deploy import DeploySpec

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
    """How :func:`measure` times (``timing``) and whether it exports to ONNX (``onnx_dir``)."""

    batch: int = 32
    warmup: int = 5
    repeats: int = 30
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


def _latency(run: Callable[[Tensor], Any], one: Tensor, calls: list[Tensor],
             settings: Settings, prefix: str, batch: int) -> dict[str, float]:
    b1 = time_calls(lambda: run(one), warmup=settings.warmup, repeats=settings.repeats)

    def throughput() -> None:
        for x in calls:
            run(x)

    bn = time_calls(throughput, warmup=settings.warmup, repeats=settings.repeats)
    return {f"{prefix}_b1_ms": b1.median_ms, f"{prefix}_batch_ms": bn.median_ms,
            f"{prefix}_images_per_s": 1000 * batch / bn.median_ms}


def measure(subject: Subject, settings: Settings) -> dict[str, Any]:
    """One row of the profile (see the module docstring); latency columns only when
    ``settings.timing``, onnxruntime ones only with ``settings.onnx_dir``."""
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
    if settings.timing:
        def eager(x: Tensor) -> Any:
            with torch.inference_mode():
                return net(x)

        row.update(_latency(eager, one, calls, settings, "eager", settings.batch))
    if settings.onnx_dir is not None:
        from kdlab.deploy.onnx_format import OnnxRunner
        from kdlab.deploy.write import write_verified

        path = Path(settings.onnx_dir) / f"{file_name(subject.label)}.onnx"
        check = write_verified("onnx", spec, images[: settings.verify_images], path,
                               subject.metadata, label=subject.label,
                               tolerance=settings.tolerance)
        row["onnx_mb"] = path.stat().st_size / MB
        row["onnx_check"] = check.describe()
        if settings.timing:
            runner = OnnxRunner(path, threads=settings.threads)
            row.update(_latency(runner, one, calls, settings, "ort", settings.batch))
    return row


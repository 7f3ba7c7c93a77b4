"""What a network costs to deploy, counted without timing: parameters, FLOP per image and the
size of its weights file.

- parameters: the network's distinct parameters (``nn.Module.parameters()``), buffers such
  as BatchNorm statistics not included;
- FLOP per image: one forward pass on one image in eval mode, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions, 2 FLOP
  per multiply-add; element-wise work, pooling, ROI align and NMS are not counted);
- size: the bytes of the safetensors file of its ``state_dict`` (float32 weights, buffers
  and a small JSON header), what ``kdlab export`` writes for it.

:func:`teacher_vs_student` gives the rows of the teacher-vs-student table that a
distillation run's ``report.md`` ends with (:mod:`kdlab.training.report`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside; afterwards every submodule is back in its own mode (a
    frozen teacher inside a wrapper stays in eval mode)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, mode in modes:
            m.training = mode


def parameter_count(net: nn.Module) -> int:
    """The number of (distinct) parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def forward_gflop(net: nn.Module, image: Tensor) -> float | None:
    """GFLOP (1e9 FLOP) of ``net``'s forward pass on ``image`` ``(1, C, H, W)`` in eval mode;
    None where the counter cannot follow the network."""
    with evaluating(net):
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                net(image)
        except RuntimeError:
            return None
    return counter.get_total_flops() / 1e9


def safetensors_bytes(net: nn.Module) -> int:
    """The size of ``net``'s weights as a safetensors file (tensors copied to the CPU)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    return len(save(tensors))


@dataclass
class Cost:
    """One network's deployment cost (see the module docstring)."""

    params: int
    gflop: float | None
    size_bytes: int


def network_cost(net: nn.Module, image: Tensor) -> Cost:
    """Parameters, GFLOP per image (on ``image``, one image) and weights-file size of ``net``."""
    return Cost(parameter_count(net), forward_gflop(net, image), safetensors_bytes(net))


def teacher_vs_student(networks: dict[str, tuple[str, nn.Module, float | None]],
                       image: Tensor) -> list[dict[str, Any]]:
    """One row per ``{name: (model, deployed module, score)}``: ``name``, ``model``,
    ``score`` and the :class:`Cost` fields, every network measured on ``image``."""
    return [{"name": name, "model": model, "score": score, **asdict(network_cost(net, image))}
            for name, (model, net, score) in networks.items()]


def checkpoint_score(path: str | None, metric: str) -> float | None:
    """The validation ``metric`` a teacher checkpoint was saved at, read from its run's
    ``metrics.csv`` (the best value for ``best.pt``, the last for any other file); None for a
    file outside a run folder (e.g. a ``.safetensors`` export)."""
    from kdlab.training.metrics_log import read_csv

    if not path:
        return None
    csv_path = Path(path).parent / "metrics.csv"
    if not csv_path.is_file():
        return None
    try:
        values = [float(r[f"val_student_{metric}"]) for r in read_csv(csv_path)
                  if isinstance(r.get(f"val_student_{metric}"), float)]
    except (OSError, ValueError):
        return None
    if not values:
        return None
    return max(values) if Path(path).name == "best.pt" else values[-1]


def distillation_costs(distiller: Any, cfg: Any, summary: dict[str, Any], loader: Any,
                       device: torch.device) -> list[dict[str, Any]]:
    """The teacher-vs-student rows of a finished distillation: the frozen teacher, then every
    exported network, each as its task deploys it (:meth:`kdlab.tasks.Task.deploy`) and
    counted on the first validation image; scores are the best validation ``metric``. Empty
    for a task that has no deployable graph."""
    metric = summary["metric"]
    image = next(iter(loader))[0][0][None].to(device)
    shape = tuple(image.shape[1:])
    exported = distiller.exported()
    nets: dict[str, tuple[str, nn.Module, float | None]] = {}
    if distiller.teacher is not None and "teacher" not in exported:
        nets["teacher"] = (str(cfg.model.teacher), distiller.teacher.net,
                           checkpoint_score(cfg.model.teacher_checkpoint, metric))
    for name, net in exported.items():
        spec = getattr(net, "kdlab_spec", None)
        model = (spec["model"] if isinstance(spec, dict)
                 else f"{cfg.method_name}({cfg.model.student})")
        score = summary.get("networks", {}).get(name, {}).get(f"best_{metric}")
        nets[name] = (str(model), net, score)
    try:
        deployed = {k: (m, distiller.task.deploy(n, shape).module, s)
                    for k, (m, n, s) in nets.items()}
    except NotImplementedError:  # a task (a plugin's) without a deployable graph: no table
        return []
    return teacher_vs_student(deployed, image)

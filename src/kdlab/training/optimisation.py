"""What steps a run's parameters: the optimiser, the LR schedule, the AMP grad scaler, and the
optimisers of parameters a method steps separately (e.g. SKD's discriminator).

The schedule is stepped once per epoch (multistep, cosine, constant) or once per iteration
(``poly``, the segmentation literature's schedule, and every schedule whose length is given
as ``schedule.iterations``); warm-up epochs are a linear ramp either way, and
``schedule.warmup_iters`` a linear ramp over the first optimiser steps on top of any schedule
(Detectron2's). Everything here saves into and loads from one plain dict of the run
checkpoint.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from kdlab.core.config import OptimConfig, ScheduleConfig
from kdlab.core.settings import check_settings
from kdlab.errors import UserError

#: schedules stepped after every iteration instead of every epoch
PER_ITERATION = frozenset({"poly"})


#: the layers whose parameters ``optim.weight_decay_norm`` decays (Detectron2's
#: ``NORM_MODULE_TYPES``)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def norm_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weights and biases of every normalisation layer inside ``module``."""
    return [p for m in module.modules() if isinstance(m, NORM_LAYERS)
            for p in m.parameters(recurse=False)]


def _groups(cfg: OptimConfig, params: list[nn.Parameter],
            norm: list[nn.Parameter]) -> list[dict[str, Any]]:
    """One parameter group, or two when ``optim.weight_decay_norm`` gives normalisation
    layers their own weight decay (Detectron2's ``get_default_optimizer_params``)."""
    if cfg.weight_decay_norm is None:
        return [{"params": params}]
    ids = {id(p) for p in norm}
    groups = [{"params": [p for p in params if id(p) not in ids]},
              {"params": [p for p in params if id(p) in ids],
               "weight_decay": cfg.weight_decay_norm}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter],
                    norm: list[nn.Parameter] | None = None) -> Optimizer:
    """SGD (momentum, weight decay, optional Nesterov) or AdamW; ``norm`` are the
    normalisation layers' parameters, decayed by ``optim.weight_decay_norm`` when it is set.
    The settings are checked first (:func:`~kdlab.core.settings.check_settings`)."""
    check_settings(cfg, "optim")
    groups = _groups(cfg, params, norm or [])
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    assert cfg.name == "adamw", cfg.name  # the choices of OptimConfig.name
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _one(step: int) -> float:
    return 1.0


class PolyDecay:
    """``(1 - step / total) ** power``, the 'poly' policy (Chen et al., DeepLab, TPAMI 2018,
    Sec. 4.1); a plain object so that LambdaLR saves and restores its settings."""

    def __init__(self, total: int, power: float) -> None:
        self.total, self.power = total, power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total) ** self.power


def per_iteration(cfg: ScheduleConfig) -> bool:
    """Whether the schedule is stepped after every iteration (poly, or any schedule whose
    length is given in ``schedule.iterations``) rather than every epoch."""
    return cfg.name in PER_ITERATION or cfg.iterations is not None


def run_length(cfg: ScheduleConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps of the last epoch) of a run: ``schedule.epochs`` full epochs, or with
    ``schedule.iterations`` as many epochs as those iterations need, the last one cut short."""
    if cfg.iterations is None:
        return cfg.epochs, steps_per_epoch
    epochs = math.ceil(cfg.iterations / steps_per_epoch)
    return epochs, cfg.iterations - (epochs - 1) * steps_per_epoch


def build_scheduler(cfg: ScheduleConfig, opt: Optimizer,
                    steps_per_epoch: int = 1) -> lr_scheduler.LRScheduler:
    """The LR schedule: multistep | cosine | constant (stepped per epoch) or poly (stepped per
    iteration, ``steps_per_epoch`` of them per epoch), after an optional linear warm-up of
    ``warmup_epochs`` (milestones stay absolute epochs). With ``schedule.iterations`` every
    schedule is stepped per iteration over exactly that many iterations, and milestones
    are iterations. The settings are checked first
    (:func:`~kdlab.core.settings.check_settings`), then what needs ``steps_per_epoch``."""
    check_settings(cfg, "schedule")
    warm = cfg.warmup_epochs
    unit = steps_per_epoch if per_iteration(cfg) else 1
    total = cfg.epochs * unit if cfg.iterations is None else cfg.iterations
    if not warm * unit < total:
        raise UserError(f"schedule.warmup_epochs must be between 0 and the run's length less "
                        f"one epoch, got {warm}.")
    if cfg.name == "multistep":
        # milestones count epochs, or iterations with schedule.iterations
        start = warm if cfg.iterations is None else warm * unit
        if any(m <= start for m in cfg.milestones):
            raise UserError(f"schedule.milestones {cfg.milestones} must all come after the "
                            f"{warm} warm-up epochs.")
        main: lr_scheduler.LRScheduler = lr_scheduler.MultiStepLR(
            opt, milestones=[m - start for m in cfg.milestones], gamma=cfg.gamma)
    elif cfg.name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm * unit)
    elif cfg.name == "constant":
        main = lr_scheduler.LambdaLR(opt, _one)
    else:
        assert cfg.name == "poly", cfg.name  # the choices of ScheduleConfig.name
        main = lr_scheduler.LambdaLR(opt, PolyDecay(total - warm * unit, cfg.power))
    if warm == 0:
        return main
    ramp = lr_scheduler.LinearLR(opt, start_factor=1.0 / (warm * unit + 1), end_factor=1.0,
                                 total_iters=warm * unit)
    return lr_scheduler.SequentialLR(opt, [ramp, main], milestones=[warm * unit])


def _restore_counters(sched: lr_scheduler.LRScheduler) -> None:
    """Checkpoints store MultiStepLR's milestone Counter as a dict; make it a Counter again."""
    for s in [sched, *getattr(sched, "_schedulers", [])]:
        if isinstance(s, lr_scheduler.MultiStepLR) and not isinstance(s.milestones, Counter):
            s.milestones = Counter({int(k): int(v) for k, v in s.milestones.items()})


def warmup_scale(cfg: ScheduleConfig, iteration: int) -> float:
    """The LR multiplier of optimiser step ``iteration`` (0-based) under
    ``schedule.warmup_iters``: ``factor * (1 - a) + a`` with ``a = iteration / warmup_iters``,
    then 1 (Detectron2 v0.6 ``_get_warmup_factor_at_iter``, linear, solver/lr_scheduler.py)."""
    if iteration >= cfg.warmup_iters:
        return 1.0
    alpha = iteration / cfg.warmup_iters
    return cfg.warmup_factor * (1.0 - alpha) + alpha


SeparateGroups = dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]


@dataclass
class Optimisation:
    """The run's optimiser and schedule, the grad scaler, and separately stepped groups."""

    opt: Optimizer
    sched: lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    per_iteration: bool
    separate: dict[str, Optimizer] = field(default_factory=dict)
    #: the run's schedule applied to each separate optimiser too (the SKD authors poly-decay
    #: their critic's learning rate like the student's), except those whose factory marked
    #: them ``kdlab_schedule = "constant"`` (CIRKD's critic)
    separate_scheds: dict[str, lr_scheduler.LRScheduler] = field(default_factory=dict)
    #: the schedule settings (``warmup_iters`` scales the first steps) and the steps taken
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    iteration: int = 0

    @classmethod
    def build(cls, params: list[nn.Parameter], separate: SeparateGroups, optim: OptimConfig,
              schedule: ScheduleConfig, *, steps_per_epoch: int, device: torch.device,
              amp: str, norm: list[nn.Parameter] | None = None) -> Optimisation:
        """``params`` minus those of ``separate`` go to the run's optimiser; ``norm`` (the
        normalisation layers' parameters) take ``optim.weight_decay_norm`` when it is set."""
        apart = {id(p) for group, _ in separate.values() for p in group}
        opt = build_optimizer(optim, [p for p in params if id(p) not in apart], norm)
        own = {name: make(group) for name, (group, make) in separate.items()}
        return cls(
            opt=opt,
            sched=build_scheduler(schedule, opt, steps_per_epoch),
            scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
            per_iteration=per_iteration(schedule),
            separate=own,
            separate_scheds={name: build_scheduler(schedule, o, steps_per_epoch)
                             for name, o in own.items()
                             if getattr(o, "kdlab_schedule", "run") != "constant"},
            schedule=schedule,
        )

    def schedules(self) -> list[lr_scheduler.LRScheduler]:
        return [self.sched, *self.separate_scheds.values()]

    def optimisers(self) -> list[Optimizer]:
        return [self.opt, *self.separate.values()]

    def step(self, total: torch.Tensor) -> None:
        """Backward of ``total`` and one step of every optimiser (and of a per-iteration
        schedule)."""
        for o in self.optimisers():
            o.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        scale = warmup_scale(self.schedule, self.iteration)
        groups = [g for o in self.optimisers() for g in o.param_groups]
        scheduled = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] *= scale
        for o in self.optimisers():
            self.scaler.step(o)
        for g, lr in zip(groups, scheduled, strict=True):
            g["lr"] = lr  # the schedule goes on from its own value, not the warm one
        self.scaler.update()
        self.iteration += 1
        if self.per_iteration:
            for sched in self.schedules():
                sched.step()

    def end_epoch(self) -> None:
        if not self.per_iteration:
            for sched in self.schedules():
                sched.step()

    @property
    def lr(self) -> float:
        """The run optimiser's LR of the next step (a ``warmup_iters`` ramp included)."""
        return float(self.opt.param_groups[0]["lr"]) * warmup_scale(self.schedule,
                                                                    self.iteration)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "separate_optimizers": {n: o.state_dict() for n, o in self.separate.items()},
                "separate_schedulers": {n: s.state_dict()
                                        for n, s in self.separate_scheds.items()},
                "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state.get("iteration", 0))  # absent before warmup_iters existed
        saved = state.get("separate_optimizers", {})
        if set(saved) != set(self.separate):
            raise KeyError(f"separate optimisers {sorted(saved)} != {sorted(self.separate)}")
        for name, o in self.separate.items():
            o.load_state_dict(saved[name])
        for name, sched in self.separate_scheds.items():
            sched.load_state_dict(state["separate_schedulers"][name])
        for sched in self.schedules():
            _restore_counters(sched)

"""What steps a run's parameters: the optimiser, the LR schedule, the AMP grad scaler, and the
optimisers of parameters a method steps separately (e.g. SKD's discriminator).

The schedule is stepped once per epoch (multistep, cosine, constant) or once per iteration
(``poly``, the segmentation literature's schedule); warm-up epochs are a linear ramp either
way. Everything here saves into and loads from one plain dict of the run checkpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from kdlab.core.config import OptimConfig, ScheduleConfig
from kdlab.core.settings import check_settings

#: schedules stepped after every iteration instead of every epoch
PER_ITERATION = frozenset({"poly"})


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter]) -> Optimizer:
    """SGD (momentum, weight decay, optional Nesterov) or AdamW; the settings are checked
    first (:func:`~kdlab.core.settings.check_settings`)."""
    check_settings(cfg, "optim")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    assert cfg.name == "adamw", cfg.name  # the choices of OptimConfig.name
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _one(step: int) -> float:
    return 1.0


class PolyDecay:
    """``(1 - step / total) ** power``, the 'poly' policy (Chen et al., DeepLab, TPAMI 2018,
    Sec. 4.1); a plain object so that LambdaLR saves and restores its settings."""

    def __init__(self, total: int, power: float) -> None:
        self.total, self.power = total, power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total) ** self.power


def build_scheduler(cfg: ScheduleConfig, opt: Optimizer,
                    steps_per_epoch: int = 1) -> lr_scheduler.LRScheduler:
    """The LR schedule: multistep | cosine | constant (stepped per epoch) or poly (stepped per
    iteration, ``steps_per_epoch`` of them per epoch), after an optional linear warm-up of
    ``warmup_epochs`` (milestones stay absolute epochs); the settings are checked first
    (:func:`~kdlab.core.settings.check_settings`)."""
    check_settings(cfg, "schedule")
    warm = cfg.warmup_epochs
    unit = steps_per_epoch if cfg.name in PER_ITERATION else 1
    if cfg.name == "multistep":
        main: lr_scheduler.LRScheduler = lr_scheduler.MultiStepLR(
            opt, milestones=[m - warm for m in cfg.milestones], gamma=cfg.gamma)
    elif cfg.name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs - warm)
    elif cfg.name == "constant":
        main = lr_scheduler.LambdaLR(opt, _one)
    else:
        assert cfg.name == "poly", cfg.name  # the choices of ScheduleConfig.name
        main = lr_scheduler.LambdaLR(opt, PolyDecay((cfg.epochs - warm) * unit, cfg.power))
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
    #: their critic's learning rate like the student's)
    separate_scheds: dict[str, lr_scheduler.LRScheduler] = field(default_factory=dict)

    @classmethod
    def build(cls, params: list[nn.Parameter], separate: SeparateGroups, optim: OptimConfig,
              schedule: ScheduleConfig, *, steps_per_epoch: int, device: torch.device,
              amp: str) -> Optimisation:
        """``params`` minus those of ``separate`` go to the run's optimiser."""
        apart = {id(p) for group, _ in separate.values() for p in group}
        opt = build_optimizer(optim, [p for p in params if id(p) not in apart])
        own = {name: make(group) for name, (group, make) in separate.items()}
        return cls(
            opt=opt,
            sched=build_scheduler(schedule, opt, steps_per_epoch),
            scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
            per_iteration=schedule.name in PER_ITERATION,
            separate=own,
            separate_scheds={name: build_scheduler(schedule, o, steps_per_epoch)
                             for name, o in own.items()},
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
        for o in self.optimisers():
            self.scaler.step(o)
        self.scaler.update()
        if self.per_iteration:
            for sched in self.schedules():
                sched.step()

    def end_epoch(self) -> None:
        if not self.per_iteration:
            for sched in self.schedules():
                sched.step()

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "separate_optimizers": {n: o.state_dict() for n, o in self.separate.items()},
                "separate_schedulers": {n: s.state_dict()
                                        for n, s in self.separate_scheds.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        saved = state.get("separate_optimizers", {})
        if set(saved) != set(self.separate):
            raise KeyError(f"separate optimisers {sorted(saved)} != {sorted(self.separate)}")
        for name, o in self.separate.items():
            o.load_state_dict(saved[name])
            self.separate_scheds[name].load_state_dict(state["separate_schedulers"][name])
        for sched in self.schedules():
            _restore_counters(sched)

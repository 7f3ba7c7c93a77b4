"""Detectron2's solver settings: ``optim.weight_decay_norm`` (normalisation layers decayed
apart from the other parameters, ``SOLVER.WEIGHT_DECAY_NORM``, solver/build.py) and
``schedule.warmup_iters`` / ``warmup_factor`` (a linear warm-up over the first optimiser steps
on top of the schedule, ``WarmupMultiStepLR``, solver/lr_scheduler.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.core.config import OptimConfig, ScheduleConfig
from kdlab.errors import UserError
from kdlab.training.optimisation import Optimisation, build_optimizer, norm_parameters
from kdlab.training.validate import validate_config


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))


def test_norm_parameters_are_the_normalisation_layers_weights_and_biases():
    net = _net()
    assert [id(p) for p in norm_parameters(net)] == [id(p) for p in
                                                     [*net[1].parameters(), *net[2].parameters()]]


def test_unset_keeps_one_group_with_the_run_weight_decay():
    net = _net()
    opt = build_optimizer(OptimConfig(weight_decay=1e-4), list(net.parameters()),
                          norm_parameters(net))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4


def test_zero_leaves_norm_layers_undecayed_and_decays_the_rest():
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    cfg = OptimConfig(lr=0.5, momentum=0.0, weight_decay=0.1, weight_decay_norm=0.0)
    optim = Optimisation.build(list(net.parameters()), {}, cfg,
                               ScheduleConfig(name="constant", epochs=2),
                               steps_per_epoch=1, device=torch.device("cpu"), amp="none",
                               norm=norm_parameters(net))
    assert [g["weight_decay"] for g in optim.opt.param_groups] == [0.1, 0.0]
    optim.step(sum(p.sum() for p in net.parameters()) * 0.0)
    assert torch.all(net[0].weight == 1.0 - 0.5 * 0.1)
    for p in norm_parameters(net):
        assert torch.all(p == 1.0)


def _steps_lrs(schedule: ScheduleConfig, steps: int, *, steps_per_epoch: int,
               resume_at: int | None = None) -> list[float]:
    """The LR each SGD step applied (read back from a parameter moved by a unit gradient)."""
    w = nn.Parameter(torch.zeros((), dtype=torch.float64))
    cfg = OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.0)

    def build() -> Optimisation:
        return Optimisation.build([w], {}, cfg, schedule, steps_per_epoch=steps_per_epoch,
                                  device=torch.device("cpu"), amp="none")

    optim, lrs = build(), []
    for i in range(steps):
        if i == resume_at:
            state = optim.state_dict()
            optim = build()
            optim.load_state_dict(state)
        before = float(w.detach())
        optim.step(-w)  # d(-w)/dw = -1: w grows by the LR applied
        lrs.append(float(w.detach()) - before)
        if (i + 1) % steps_per_epoch == 0:
            optim.end_epoch()
    return lrs


def detectron2_lr(i: int, base: float, iters: int, factor: float, steps: list[int],
                  gamma: float) -> float:
    """Detectron2 v0.6 WarmupMultiStepLR at iteration i (linear warm-up)."""
    warm = 1.0 if i >= iters else factor * (1 - i / iters) + i / iters
    return base * warm * gamma ** sum(i >= s for s in steps)


def test_warmup_iters_is_detectron2s_linear_warmup_over_a_multistep_schedule():
    sched = ScheduleConfig(name="multistep", epochs=4, milestones=[2, 3], gamma=0.1,
                           warmup_iters=5, warmup_factor=0.001)
    lrs = _steps_lrs(sched, 12, steps_per_epoch=3)
    want = [detectron2_lr(i, 0.1, 5, 0.001, [6, 9], 0.1) for i in range(12)]
    assert lrs == pytest.approx(want, rel=1e-6)


def test_warmup_survives_a_resume_and_scales_the_per_iteration_poly_schedule():
    sched = ScheduleConfig(name="poly", epochs=2, power=0.9, warmup_iters=4, warmup_factor=0.5)
    assert _steps_lrs(sched, 6, steps_per_epoch=3, resume_at=2) == pytest.approx(
        [0.1 * (1 - i / 6) ** 0.9 * (0.5 * (1 - i / 4) + i / 4 if i < 4 else 1.0)
         for i in range(6)], rel=1e-6)


def test_two_warmups_are_refused():
    from kdlab.core.config import RunConfig

    cfg = RunConfig()
    cfg.schedule.warmup_epochs, cfg.schedule.warmup_iters = 1, 1000
    with pytest.raises(UserError, match="two warm-ups"):
        validate_config(cfg)

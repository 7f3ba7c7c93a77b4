"""Runs measured in iterations (CIRKD's protocol: 40,000 iterations, evaluation every 800,
the best evaluation kept) and separately stepped optimisers at a constant LR (CIRKD's
critic): the run's length, the LR at every step, the evaluation rows, best.pt."""

from __future__ import annotations

import csv

import pytest
import torch

from kdlab.core.config import ScheduleConfig
from kdlab.errors import UserError
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.optimisation import Optimisation, build_scheduler, run_length
from kdlab.training.trainer import Trainer
from support.training import registered, tiny_config


@pytest.fixture(autouse=True)
def _entries():
    with registered():
        yield


def test_run_length_in_iterations():
    assert run_length(ScheduleConfig(epochs=3), 4) == (3, 4)
    assert run_length(ScheduleConfig(iterations=10), 4) == (3, 2)  # 4 + 4 + 2
    assert run_length(ScheduleConfig(iterations=8), 4) == (2, 4)
    # CIRKD: 40,000 iterations of 2975 / 16 = 185 steps per pass
    assert run_length(ScheduleConfig(iterations=40_000), 185) == (217, 40_000 - 216 * 185)


def test_poly_over_iterations_is_cirkds_adjust_lr():
    """CIRKD's adjust_lr (train_kd.py:282-287): lr (1 - it / max_iter)^0.9 at iteration it
    = 0, 1, ...; kdlab's epochs no longer matter once schedule.iterations is given."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.02)
    sched = build_scheduler(ScheduleConfig(name="poly", epochs=1, iterations=10), opt,
                            steps_per_epoch=4)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx([0.02 * (1 - it / 10) ** 0.9 for it in range(10)])
    opt = torch.optim.SGD([p], lr=1.0)  # multistep milestones count iterations
    sched = build_scheduler(ScheduleConfig(name="multistep", epochs=1, iterations=6,
                                           milestones=[2, 4]), opt, steps_per_epoch=4)
    got = []
    for _ in range(6):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(UserError, match="iterations"):
        build_scheduler(ScheduleConfig(name="poly", iterations=0), opt)


def _adam(params):
    return torch.optim.Adam(params, lr=4e-4)


def _constant_adam(params):
    opt = _adam(params)
    opt.kdlab_schedule = "constant"
    return opt


def test_a_separate_optimiser_keeps_a_constant_lr_when_asked():
    main = [torch.nn.Parameter(torch.zeros(2))]
    critic, other = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]
    from kdlab.core.config import OptimConfig

    build = Optimisation.build(main, {"critic": (critic, _constant_adam), "other": (other, _adam)},
                               OptimConfig(lr=0.02), ScheduleConfig(name="poly", iterations=5),
                               steps_per_epoch=5, device=torch.device("cpu"), amp="none")
    for _ in range(3):
        for o in (build.opt, *build.separate.values()):
            o.step()
        for s in build.schedules():
            s.step()
    assert build.separate["critic"].param_groups[0]["lr"] == 4e-4  # CIRKD's critic
    assert build.separate["other"].param_groups[0]["lr"] == pytest.approx(4e-4 * 0.4 ** 0.9)
    assert build.opt.param_groups[0]["lr"] == pytest.approx(0.02 * 0.4 ** 0.9)
    state = build.state_dict()
    assert set(state["separate_schedulers"]) == {"other"}
    again = Optimisation.build(main, {"critic": (critic, _constant_adam), "other": (other, _adam)},
                               OptimConfig(lr=0.02), ScheduleConfig(name="poly", iterations=5),
                               steps_per_epoch=5, device=torch.device("cpu"), amp="none")
    again.load_state_dict(state)
    assert again.separate["critic"].param_groups[0]["lr"] == 4e-4
    assert again.separate["other"].param_groups[0]["lr"] == pytest.approx(4e-4 * 0.4 ** 0.9)


def test_a_run_of_iterations_evaluates_every_n_and_keeps_the_best(tmp_path):
    out = tmp_path / "run"  # 128 images in batches of 32: 4 steps per pass
    cfg = tiny_config(out, schedule={"name": "poly", "iterations": 10},
                      train={"eval_every_iters": 3})
    summary = Trainer(cfg).fit()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    evals = [int(r["iteration"]) for r in rows if r["val_student_top1"]]
    assert evals == [3, 6, 9, 10]  # every third iteration and the run's last
    epochs = [r for r in rows if r["loss"]]
    assert [int(r["iteration"]) for r in epochs] == [4, 8, 10]
    assert summary["epochs"] == 3
    scores = [float(r["val_student_top1"]) for r in rows if r["val_student_top1"]]
    assert summary["best_top1"] == pytest.approx(max(scores))
    best = load_checkpoint(out / "best.pt")
    assert best["iteration"] == evals[scores.index(max(scores))]
    last = load_checkpoint(out / "last.pt")
    assert last["iteration"] == 10 and last["epochs"] == 3


def test_a_run_of_iterations_resumed_equals_one_straight_through(tmp_path, monkeypatch):
    import kdlab.training.trainer as trainer_mod

    def cfg(out):
        return tiny_config(out, schedule={"name": "poly", "iterations": 10},
                           train={"eval_every_iters": 3})

    Trainer(cfg(tmp_path / "straight")).fit()
    real = trainer_mod.Trainer._train_epoch

    def killed_in_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "broken")).fit()
    monkeypatch.undo()
    Trainer(cfg(tmp_path / "broken"), resume=True).fit()
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "broken" / "last.pt")
    assert all(torch.equal(v, b["distiller"][k]) for k, v in a["distiller"].items())
    rows = list(csv.DictReader(open(tmp_path / "broken" / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows if r["val_student_top1"]] == [3, 6, 9, 10]

"""The task layer on the trainer: task checks, the poly schedule, separately stepped
optimisers (exact resume included), and task-generic summaries."""

from __future__ import annotations

import pytest
import torch

from kdlab.core.config import ScheduleConfig
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models import build_model
from kdlab.tasks import TASKS, Task, build_task
from kdlab.training.build import check_task
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.optimisation import Optimisation, PolyDecay, build_scheduler
from kdlab.training.trainer import Trainer
from support.training import ADV, registered, tiny_config


@pytest.fixture(autouse=True)
def _entries():
    with registered():
        yield


def test_registered_tasks_and_their_primary_metric():
    assert "classification" in TASKS
    task = build_task("classification")
    assert isinstance(task, Task) and task.primary == "top1" and task.ignore_index is None
    with pytest.raises(UserError, match="Unknown task"):
        build_task("clasification")


class PretendTask(Task):
    name, primary = "_pretend", "score"


def test_a_run_whose_parts_do_not_fit_its_task_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    check_task(cfg)
    cfg.task = "_pretend"
    TASKS.register("_pretend")(PretendTask)
    try:
        with pytest.raises(UserError, match="set task: classification"):
            check_task(cfg)
    finally:
        del TASKS._entries["_pretend"]
    cfg.task = "segmentaton"
    with pytest.raises(UserError, match="Unknown task"):
        check_task(cfg)


def test_a_method_refuses_a_task_it_does_not_support():
    student = build_model("resnet8", num_classes=10, in_channels=1, input_size=28)
    teacher = build_model("resnet8", num_classes=10, in_channels=1, input_size=28)

    with pytest.raises(UserError, match="does not support task '_pretend'"):
        build_distiller("crd", {}, student, teacher, train_size=10, task=PretendTask())


def test_poly_schedule_steps_per_iteration_with_warm_up():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(ScheduleConfig(name="poly", epochs=3, power=0.9), opt,
                            steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([(1 - i / 12) ** 0.9 for i in range(12)])
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(ScheduleConfig(name="poly", epochs=3, warmup_epochs=1), opt,
                            steps_per_epoch=2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[3:] == pytest.approx([PolyDecay(4, 0.9)(i) for i in (1, 2, 3)])
    with pytest.raises(UserError, match="schedule.power"):
        build_scheduler(ScheduleConfig(name="poly", epochs=3, power=0.0), opt)


def test_separate_optimisers_step_only_their_parameters():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    from kdlab.core.config import OptimConfig

    def adam(params):
        return torch.optim.Adam(params, lr=0.5)

    optim = Optimisation.build([a, b], {"b": ([b], adam)}, OptimConfig(lr=0.1, momentum=0.0,
                               weight_decay=0.0), ScheduleConfig(name="constant", epochs=1),
                               steps_per_epoch=1, device=torch.device("cpu"), amp="none")
    assert [p for g in optim.opt.param_groups for p in g["params"]] == [a]
    optim.step(a.sum() + 3 * b.sum())
    assert torch.allclose(a, torch.full((2,), 0.9))  # SGD, lr 0.1, gradient 1
    assert torch.allclose(b, torch.full((2,), 0.5))  # Adam's first step: lr * sign
    state = optim.state_dict()
    assert set(state["separate_optimizers"]) == {"b"} == set(state["separate_schedulers"])


def test_separate_optimisers_follow_the_run_schedule():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    from kdlab.core.config import OptimConfig

    def adam(params):
        return torch.optim.Adam(params, lr=0.5)

    optim = Optimisation.build([a, b], {"b": ([b], adam)}, OptimConfig(lr=0.1),
                               ScheduleConfig(name="poly", epochs=2, power=1.0),
                               steps_per_epoch=2, device=torch.device("cpu"), amp="none")
    optim.step(a.sum() + b.sum())
    assert optim.lr == pytest.approx(0.1 * 3 / 4)
    assert optim.separate["b"].param_groups[0]["lr"] == pytest.approx(0.5 * 3 / 4)


def test_a_separately_optimised_critic_trains_and_resumes_exactly(tmp_path):
    cfg = tiny_config(tmp_path / "straight", method={"name": ADV})
    summary = Trainer(cfg).fit()
    assert summary["metric"] == "top1" and summary["task"] == "classification"
    ckpt = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert set(ckpt["separate_optimizers"]) == {"critic"}
    assert ckpt["separate_optimizers"]["critic"]["state"], "Adam state of the critic is saved"
    # the run's SGD does not hold the critic's parameters
    n_main = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    n_all = len([k for k in ckpt["distiller"] if "running" not in k and "num_batches" not in k])
    assert n_main == n_all - 2

    one = tiny_config(tmp_path / "resumed", method={"name": ADV},
                      schedule={"name": "multistep", "epochs": 1, "milestones": [1]})
    Trainer(one).fit()
    Trainer(tiny_config(tmp_path / "resumed", method={"name": ADV}), resume=True).fit()
    a = load_checkpoint(tmp_path / "resumed" / "last.pt")["distiller"]
    assert all(torch.equal(v, a[k]) for k, v in ckpt["distiller"].items())


def test_classification_summary_keeps_its_names(tmp_path):
    summary = Trainer(tiny_config(tmp_path / "run")).fit()
    student = summary["networks"]["student"]
    assert {"best_top1", "last_top1", "last_top5", "last_loss"} <= set(student)
    assert summary["best_top1"] == student["best_top1"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "best top-1" in report



def test_task_options_reach_the_task_and_unknown_ones_are_refused():
    task = build_task("segmentation", 255, num_classes=11, options={"aux_weight": 0.2})
    assert task.aux_weight == 0.2 and task.num_classes == 11 and task.ignore_index == 255
    with pytest.raises(UserError, match="Unknown task_options windw"):
        build_task("segmentation", 255, options={"windw": 64})
    with pytest.raises(UserError, match="takes none"):
        build_task("classification", options={"window": 64})


def test_a_segmentation_run_with_an_aux_head_trains_exports_and_reloads(tmp_path):
    """task: segmentation end to end: builder options from the recipe (an auxiliary head),
    mIoU as the run's metric, and the export rebuilt with the same options."""
    from kdlab.cli import main
    from kdlab.core.config import RunConfig, build_dataclass
    from kdlab.export import load_exported

    cfg = build_dataclass(RunConfig, {
        "task": "segmentation", "task_options": {"aux_weight": 0.4},
        "data": {"name": "scenes_seg", "scenes_train": 64, "scenes_val": 32, "batch_size": 16,
                 "eval_batch_size": 32},
        "model": {"student": "seg_resnet8", "student_options": {"aux": True}},
        "method": {"name": "ce"}, "schedule": {"name": "poly", "epochs": 1},
        "train": {"device": "cpu", "out_dir": str(tmp_path / "run"), "progress": "none"},
    }, where="config")
    summary = Trainer(cfg).fit()
    assert summary["metric"] == "miou" and 0.0 <= summary["best_miou"] <= 100.0
    assert (tmp_path / "run" / "segmentation.png").is_file()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.safetensors")]) == 0
    net = load_exported(tmp_path / "s.safetensors")
    assert hasattr(net, "aux_classifier") and net.aux_classifier is not None
    out = net(torch.zeros(1, 1, 64, 64))
    assert out["out"].shape == (1, 11, 64, 64)

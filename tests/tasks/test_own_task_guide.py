"""docs/own-task.md runs as written: its code blocks make the ``centres`` plugin folder and its
recipes, and its two commands train the teacher and distil the student through the real
command line (a few steps on small scenes made from tiny Fashion-MNIST files): every loss
finite and going down, the task's metric reported; `kdlab eval` finds the plugin again from
the run, and the task's metric counts what it says it counts."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from support.data import tiny_fashion
from support.guides import (
    guide_commands,
    guide_files,
    imported_plugin,
    run_kdlab,
    write_guide_files,
)

GUIDE = "own-task.md"
#: small scenes and few steps: the guide's recipes are sized for a real run
SMALL = ["data.scenes_train=48", "data.scenes_val=16", "data.batch_size=16",
         "data.eval_batch_size=16", "schedule.epochs=2", "train.device=cpu",
         "train.progress=none", "optim.lr=0.02"]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_guide_names_its_files_and_commands():
    assert set(guide_files(GUIDE)) == {
        "centres/__init__.py", "centres/task.py", "centres/dataset.py", "centres/models.py",
        "centres_teacher.yaml", "centres_student.yaml"}
    assert [c[:2] for c in guide_commands(GUIDE)] == [["kdlab", "train"], ["kdlab", "distill"]]


@pytest.mark.slow
def test_the_guide_task_trains_and_distils_end_to_end(tmp_path):
    write_guide_files(GUIDE, tmp_path)
    tiny_fashion(tmp_path / "fashion", n_train=60, n_val=20)
    sets = [*SMALL, f"data.root={tmp_path / 'fashion'}", "data.download=false"]
    for command in guide_commands(GUIDE):
        done = run_kdlab([*command[1:], *(a for s in sets for a in ("--set", s))], tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    teacher = metrics(tmp_path / "runs" / "centres" / "teacher")
    losses = [float(r["loss"]) for r in teacher]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert all(r["val_student_recall"] != "" for r in teacher)

    student = metrics(tmp_path / "runs" / "centres" / "fitnet")
    assert len(student) == 2
    for row in student:
        assert math.isfinite(float(row["loss"])) and float(row["loss_hint"]) > 0
        assert row["teacher_recall"] != ""  # the teacher, evaluated before training
    assert float(student[-1]["loss"]) < float(student[0]["loss"])

    evaluated = run_kdlab(["eval", "runs/centres/fitnet"], tmp_path)  # the run names its plugin
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"^student\s+centres_resnet8\s+[\d.]+\s+[\d.]+\s+16$", evaluated.stdout,
                     re.M), evaluated.stdout
    listed = run_kdlab(["--import", "centres", "list", "models"], tmp_path)
    assert listed.returncode == 0 and "centres_resnet8" in listed.stdout
    assert re.search(r"^centres_resnet8\s+centres\s+seg_resnet8 predicting", listed.stdout,
                     re.M), listed.stdout


@pytest.fixture
def centres(tmp_path):
    write_guide_files(GUIDE, tmp_path)
    with imported_plugin(tmp_path, "centres") as module:
        yield module


def test_the_guide_task_counts_a_centre_found_where_the_heat_map_peaks_near_it(centres):
    from kdlab.tasks import TASKS

    heat_map = centres.task.heat_map
    task = TASKS.get("centres")()
    targets = torch.zeros(2, 16, 16, dtype=torch.int64)
    targets[0, 4, 5] = targets[0, 10, 12] = targets[1, 8, 8] = 1

    class Predicts(torch.nn.Module):  # logits of a given heat map at half the resolution
        def __init__(self, heat: torch.Tensor) -> None:
            super().__init__()
            self.heat = heat

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = torch.logit(self.heat[images[:, 0, 0, 0].long()], eps=1e-4)[:, None]
            return torch.nn.functional.interpolate(logits, scale_factor=0.5, mode="bilinear")

    images = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 16, 16)
    loader = [(images, targets, torch.arange(2))]
    moved = torch.roll(targets, shifts=1, dims=-1)  # every centre one pixel to the right
    far = torch.roll(targets, shifts=6, dims=-1)  # six: the window ends 4 pixels away
    for heat, recall in ((heat_map(targets), 100.0), (heat_map(moved), 100.0),
                         (heat_map(far), 0.0), (torch.zeros(2, 16, 16), 0.0)):
        got = task.evaluate(Predicts(heat), loader, device=torch.device("cpu"))
        assert got["recall"] == pytest.approx(recall) and got["images"] == 2, heat
    loss = task.loss(SimpleNamespace(logits=torch.zeros(2, 1, 8, 8)), targets)
    assert loss.item() == pytest.approx(math.log(2.0))  # p = 1/2 whatever the target
    example = task.example_targets(4, 1, (32, 32), torch.Generator().manual_seed(0), "cpu")
    assert example.shape == (4, 32, 32) and set(example.unique().tolist()) <= {0, 1}


def test_methods_for_any_task_run_on_the_guide_task_and_others_say_which_tasks_they_support(
        centres):
    from kdlab.errors import UserError
    from kdlab.methods import METHODS

    assert METHODS.get("ce").for_task("centres") is METHODS.get("ce")
    assert METHODS.get("fitnet").for_task("centres") is METHODS.get("fitnet")
    assert METHODS.get("fitnet").for_task("detection").__name__ == "FitNetDetection"
    said = (r"does not support task 'centres' \(it supports classification, segmentation, "
            r"detection\); pick a method for centres")
    with pytest.raises(UserError, match=said):
        METHODS.get("kd").for_task("centres")

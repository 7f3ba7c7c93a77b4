"""docs/own-task.md runs as written: its code blocks make the ``centres`` plugin folder and its
recipes, and its two commands train the teacher and distil the student through the real
command line (a few steps on small scenes made from tiny Fashion-MNIST files): every loss
finite and going down, the task's metric reported; `kdlab eval` finds the plugin again from
the run, and the task's metric counts what it says it counts."""

from __future__ import annotations

import csv
import importlib
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from support.data import tiny_fashion

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "own-task.md"
#: small scenes and few steps: the guide's recipes are sized for a real run
SMALL = ["data.scenes_train=48", "data.scenes_val=16", "data.batch_size=16",
         "data.eval_batch_size=16", "schedule.epochs=2", "train.device=cpu",
         "train.progress=none", "optim.lr=0.02"]


def guide_files(text: str) -> dict[str, str]:
    """``{path: text}`` of the guide's code blocks whose first line is ``# <path>``."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", text, re.S)
    return dict(blocks)


def guide_commands(text: str) -> list[list[str]]:
    bash = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [shlex.split(line) for block in bash for line in block.splitlines()
            if line.startswith("kdlab ")]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT / "src")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "kdlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def write_guide_files(folder: Path) -> str:
    text = GUIDE.read_text()
    for name, body in guide_files(text).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    return text


def test_the_guide_names_its_files_and_commands():
    text = GUIDE.read_text()
    assert set(guide_files(text)) == {
        "centres/__init__.py", "centres/task.py", "centres/dataset.py", "centres/models.py",
        "centres/methods.py", "centres_teacher.yaml", "centres_student.yaml"}
    assert [c[:2] for c in guide_commands(text)] == [["kdlab", "train"], ["kdlab", "distill"]]


@pytest.mark.slow
def test_the_guide_task_trains_and_distils_end_to_end(tmp_path):
    text = write_guide_files(tmp_path)
    tiny_fashion(tmp_path / "fashion", n_train=60, n_val=20)
    sets = [*SMALL, f"data.root={tmp_path / 'fashion'}", "data.download=false"]
    for command in guide_commands(text):
        done = run([*command[1:], *(a for s in sets for a in ("--set", s))], tmp_path)
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

    evaluated = run(["eval", "runs/centres/fitnet"], tmp_path)  # the run names its plugin
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"^student\s+centres_resnet8\s+[\d.]+\s+[\d.]+\s+16$", evaluated.stdout,
                     re.M), evaluated.stdout
    listed = run(["--import", "centres", "list", "models"], tmp_path)
    assert listed.returncode == 0 and "centres_resnet8" in listed.stdout
    assert re.search(r"^centres_resnet8\s+centres\s+seg_resnet8 predicting", listed.stdout,
                     re.M), listed.stdout


@pytest.fixture
def centres_plugin(tmp_path, monkeypatch):
    """The guide's folder imported in this process; its registrations and modules are
    removed afterwards (the registries hold kdlab's own entries only, for the other tests)."""
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.models import MODELS
    from kdlab.tasks import TASKS

    write_guide_files(tmp_path)
    for registry in (TASKS, DATASETS, MODELS, METHODS):
        registry.names()  # filled now, so that the copy holds kdlab's own entries
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("centres")
    finally:
        for name in [m for m in sys.modules if m == "centres" or m.startswith("centres.")]:
            del sys.modules[name]


def test_the_guide_task_counts_a_centre_found_where_the_heat_map_peaks_near_it(
        centres_plugin):
    from centres.task import heat_map

    from kdlab.tasks import TASKS

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

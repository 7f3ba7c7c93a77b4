"""The in-memory Python API: kdlab.distill / kdlab.train on tensors, Datasets, DataLoaders and
modules, through the one Trainer, into a run folder like the command line's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

import kdlab
from conftest import tiny_staged
from kdlab.cli import main
from kdlab.core.config import DataConfig
from kdlab.data.memory import MemoryData
from kdlab.errors import UserError
from kdlab.models import stage
from kdlab.tasks.classification.datasets.synthetic import generate
from kdlab.training.checkpoint import load_checkpoint

CPU = torch.device("cpu")
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist"
QUICK = {"batch_size": 32, "eval_batch_size": 64, "device": "cpu", "progress": "none"}


@pytest.fixture(autouse=True)
def _no_curves(request, monkeypatch):
    """curves.png costs ~1.5 s a run: drawn only where the run folder's files are compared."""
    if "run_folder" not in request.node.name:
        monkeypatch.setattr("kdlab.training.report.plot_curves", lambda *a, **k: None)


@pytest.fixture(scope="module")
def data():
    """128 training and 64 validation images (3x16x16 uint8, 10 classes): 4 steps an epoch."""
    (xt, yt), (xv, yv) = generate()
    return (xt[:128], yt[:128]), (xv[:64], yv[:64])


def pair():
    return tiny_staged(widths=(16, 32, 64, 64), seed=1), tiny_staged(seed=2)


class Images(Dataset):
    """A plain map-style dataset of (image, label) pairs; ``pil``: images as PIL images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pil: bool = False) -> None:
        self.x, self.y, self.pil = x, y, pil

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.pil:
            from torchvision.transforms.functional import to_pil_image

            return to_pil_image(self.x[i]), int(self.y[i])
        return self.x[i], int(self.y[i])


# --------------------------------------------------------------- the three kinds of data
def test_distill_from_tensors_writes_the_cli_run_folder(data, tmp_path):
    teacher, student = pair()
    before = [p.detach().clone() for p in student.parameters()]
    out = tmp_path / "api"
    trained = kdlab.distill(student=student, teacher=teacher, train=data[0], val=data[1],
                            method="fcfd", epochs=2, out=out, **QUICK)
    assert trained is student.net and not trained.training
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert all(not p.requires_grad for p in teacher.parameters())
    # the same files as a command-line run
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "batch_size": 32, "train_subset": 128, "val_subset": 64},
        "model": {"student": "resnet8"}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": "cpu", "progress": "none", "max_steps_per_epoch": 1}}))
    assert main(["train", str(recipe), "--out", str(tmp_path / "cli")]) == 0
    top = {p.name for p in (tmp_path / "cli").iterdir()}
    assert {p.name for p in out.iterdir()} == top >= {"config.yaml", "metrics.csv", "best.pt",
                                                      "last.pt", "report.md", "curves.png"}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert "teacher **memory:Sequential** (given in Python)" in (out / "report.md").read_text()
    assert cfg["data"]["name"] == "memory:tensors"
    assert cfg["model"]["student"] == cfg["model"]["teacher"] == "memory:Sequential"
    assert cfg["method"]["name"] == "fcfd" and cfg["schedule"]["epochs"] == 2
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and set(ckpt["exported"]["student"]) == set(
        student.net.state_dict())


def test_distill_from_a_dataset_and_a_dataloader(data, tmp_path):
    (xt, yt), (xv, yv) = data
    for kind, train in (("dataset", Images(xt, yt)),
                        ("loader", DataLoader(Images(xt, yt), batch_size=32, shuffle=True))):
        teacher, student = pair()
        kdlab.distill(student=student, teacher=teacher, train=train, val=Images(xv, yv),
                      method="kd", epochs=1, out=tmp_path / kind, num_workers=0, **QUICK)
        rows = (tmp_path / kind / "metrics.csv").read_text().splitlines()
        assert len(rows) == 2 and "loss_kd" in rows[0], kind


def test_a_torchvision_student_and_a_plain_module_staged_by_hand(data, tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=10)
    kdlab.distill(student=resnet, teacher=tiny_staged(widths=(16, 32, 64, 64), seed=1),
                  train=data[0], val=data[1], method="kd", epochs=1, out=tmp_path / "tv",
                  max_steps_per_epoch=1, **QUICK)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    staged = stage(net, stages=[["0", "1"], ["2", "3"]], head="6", input_shape=(3, 16, 16))
    trained = kdlab.train(student=staged, train=data[0], val=data[1], epochs=1,
                          out=tmp_path / "plain", **QUICK)
    assert trained is net
    with pytest.raises(UserError, match="kdlab.models.stage"):
        kdlab.train(student=net, train=data[0], val=data[1], epochs=1, **QUICK)


def test_a_student_by_name(data, tmp_path):
    student = kdlab.train(student="resnet8", train=data[0], val=data[1], epochs=1,
                          out=tmp_path / "named", max_steps_per_epoch=1, **QUICK)
    assert isinstance(student, nn.Module)
    cfg = yaml.safe_load((tmp_path / "named" / "config.yaml").read_text())
    assert cfg["model"]["student"] == "resnet8" and cfg["method"]["name"] == "ce"


# --------------------------------------------------------------- images
def _batches(train, val, **kw):
    source = MemoryData(train, val)
    source.set_num_classes(10)
    cfg = DataConfig(name=source.name, batch_size=32, num_workers=0, augment=True,
                     mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], **kw)
    loaders = source.build(cfg, CPU, seed=0, rank=0, world_size=1)
    loaders.train.set_epoch(1)
    return [b[0] for b in loaders.train] + [b[0] for b in loaders.val]


def test_uint8_and_float_images_reach_the_network_equal(data):
    (xt, yt), (xv, yv) = data
    as_float = (xt.float() / 255, yt), (xv.float() / 255, yv)
    want = _batches(*data)
    for got in (_batches(*as_float),
                _batches(Images(*as_float[0]), Images(*as_float[1])),
                _batches(Images(xt, yt), Images(xv, yv)),
                _batches(Images(xt, yt, pil=True), Images(xv, yv, pil=True))):
        assert len(got) == len(want)
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    x = torch.cat(want)
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5  # normalised once


def test_float_images_on_the_0_255_scale_are_refused_before_a_folder_exists(data, tmp_path):
    (xt, yt), val = data
    teacher, student = pair()
    with pytest.raises(UserError, match="looks like the 0..255 scale"):
        kdlab.distill(student=student, teacher=teacher, train=(xt.float(), yt), val=val,
                      epochs=1, out=tmp_path / "x", **QUICK)
    with pytest.raises(UserError, match="0..255 scale"):  # found in a Dataset's batch too
        kdlab.distill(student=student, teacher=teacher, train=Images(xt.float(), yt), val=val,
                      epochs=1, out=tmp_path / "y", mean=[0.5] * 3, std=[0.2] * 3, **QUICK)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_already_normalised_images(data, tmp_path):
    (xt, yt), (xv, yv) = data
    norm = ((xt.float() / 255 - 0.5) / 0.25, yt), ((xv.float() / 255 - 0.5) / 0.25, yv)
    teacher, student = pair()
    with pytest.raises(UserError, match="data.normalized=true"):
        kdlab.distill(student=student, teacher=teacher, train=norm[0], val=norm[1], epochs=1,
                      **QUICK)
    got = _batches(*norm, normalized=True)
    assert torch.equal(got[-1], norm[1][0])  # the val batch (one of 64), unchanged
    kdlab.distill(student=student, teacher=teacher, train=norm[0], val=norm[1], epochs=1,
                  normalized=True, out=tmp_path / "n", max_steps_per_epoch=1, **QUICK)


# --------------------------------------------------------------- the run folder
def test_cli_refuses_a_run_from_memory_and_the_api_resumes_it(data, tmp_path, capsys,
                                                              monkeypatch):
    import kdlab.training.trainer as trainer_mod

    settings = dict(method="fcfd", epochs=2, train=data[0], val=data[1], max_steps_per_epoch=2,
                    **QUICK)
    teacher, student = pair()
    kdlab.distill(student=student, teacher=teacher, out=tmp_path / "straight", **settings)
    real = trainer_mod.Trainer._train_epoch

    def killed_in_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, *args, **kwargs)

    out = tmp_path / "run"
    teacher, student = pair()
    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        kdlab.distill(student=student, teacher=teacher, out=out, **settings)
    monkeypatch.undo()
    capsys.readouterr()
    for args in (["eval", str(out), "--which", "last"], ["export", str(out), "--which", "last"],
                 ["distill", str(out / "config.yaml"), "--resume", "--out", str(out)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "came from Python objects (kdlab.distill)" in err and "resume=True" in err
        assert len(err.splitlines()) == 1
    kdlab.distill(student=student, teacher=teacher, out=out, resume=True, **settings)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(out / "last.pt")
    assert all(torch.equal(v, b["distiller"][k]) for k, v in a["distiller"].items())


# --------------------------------------------------------------- settings
@pytest.mark.parametrize("settings, match", [
    ({"lrr": 0.1}, "Did you mean 'lr'"),
    ({"name": "x"}, "could mean data.name or optim.name or schedule.name"),
    ({"student_pretrained": True}, "given in memory"),
    ({"out_dir": "x"}, "out= argument"),
    ({"temperature": "hot"}, "method.kd.temperature must be a number"),
    ({"optim": "adam"}, "optim.name"),
    ({"batch_size": 500}, "larger than the 128 training samples"),
    ({"mean": [0.5, 0.5, 0.5]}, "together"),
])
def test_settings_errors(data, tmp_path, settings, match):
    teacher, student = pair()
    with pytest.raises(UserError, match=match):
        kdlab.distill(student=student, teacher=teacher, train=data[0], val=data[1], epochs=1,
                      out=tmp_path / "e", **{**QUICK, **settings})
    assert not (tmp_path / "e").exists()


def test_settings_map_onto_the_run_config(data, tmp_path):
    from kdlab.api import prepare_run

    teacher, student = pair()
    cfg, prebuilt = prepare_run(
        student=student, teacher=teacher, train=data[0], val=data[1], method="dkd",
        out=str(tmp_path), epochs=40, recipe=None, num_classes=None, resume=False,
        default_method="kd", settings={"lr": 0.1, "beta": 4.0, "optim": "adamw",
                                       "schedule.warmup_epochs": 2, "seed": 3})
    assert (cfg.optim.lr, cfg.optim.name, cfg.schedule.warmup_epochs, cfg.train.seed) == (
        0.1, "adamw", 2, 3)
    assert cfg.method == {"name": "dkd", "beta": 4.0}
    assert cfg.schedule.milestones == [25, 30, 35] and cfg.data.augment is False
    assert prebuilt.student is student and prebuilt.teacher is teacher
    cfg, _ = prepare_run(  # a recipe's settings, its data and networks replaced
        student=student, teacher=teacher, train=data[0], val=data[1], method=None,
        out=str(tmp_path), epochs=8, recipe=RECIPES / "fcfd" / "resnet8_from_resnet20.yaml",
        num_classes=None, resume=False, default_method="kd", settings={})
    assert cfg.method_name == "fcfd" and cfg.method["l2_warmup_epochs"] == 2
    assert (cfg.optim.nesterov, cfg.schedule.milestones) == (True, [5, 6, 7])
    assert cfg.model.teacher_checkpoint is None and cfg.data.name == "memory:tensors"
    with pytest.raises(UserError, match="needs a teacher: pass teacher="):
        kdlab.distill(student=student, train=data[0], val=data[1], method="kd", **QUICK)
    with pytest.raises(UserError, match="trains without a teacher"):
        kdlab.distill(student=student, teacher=teacher, train=data[0], val=data[1],
                      method="ce", **QUICK)
    with pytest.raises(UserError, match="num_classes is 5 but the student has 10 outputs"):
        kdlab.train(student=student, train=data[0], val=data[1], num_classes=5, **QUICK)

"""The trainer (kdlab.training): loss goes down, exact resume, logs and reports, user errors."""

from __future__ import annotations

import csv

import pytest
import torch

from kdlab.errors import UserError
from kdlab.training.build import load_weights, resolve_device
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.optimisation import build_scheduler
from kdlab.training.trainer import Trainer
from support.training import CE, KD, MODEL, engine_tiny, registered, tiny_config


@pytest.fixture(autouse=True)
def _entries():
    with registered():
        yield


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu7")


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = tiny_config(tmp_path / "run", schedule={"name": "constant", "epochs": 4},
                      optim={"lr": 0.05})
    summary = Trainer(cfg).fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["loss_ce"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    assert summary["epochs"] == 4 and summary["best_top1"] >= summary["last_top1"] - 1e-9
    assert summary["best_top1"] > 30.0  # 10 classes: chance is 10 %


def test_outputs_and_checkpoint_format(tmp_path):
    out = tmp_path / "run"
    summary = Trainer(tiny_config(out)).fit()
    for name in ("config.yaml", "metrics.csv", "report.md", "curves.png", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "student" in (out / "report.md").read_text()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["format"] == "kdlab-run" and ckpt["epoch"] == 1
    assert ckpt["models"]["student"] == {"model": MODEL, "num_classes": 10, "in_channels": 3,
                                         "input_size": 16}
    assert set(ckpt["exported"]) == {"student"} and len(ckpt["history"]) == 2
    header = next(csv.reader(open(out / "metrics.csv")))
    for col in ("epoch", "lr", "loss", "loss_ce", "loss_l2", "train_top1", "val_student_top1",
                "val_student_top5", "epoch_seconds", "epoch_cpu_seconds", "images_per_s"):
        assert col in header
    assert summary["out_dir"] == str(out)
    assert any((out / "tensorboard").iterdir())
    # LR of epoch 2 is after the milestone at 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])


def test_resume_equals_uninterrupted(tmp_path):
    straight = tmp_path / "straight"
    Trainer(tiny_config(straight)).fit()
    broken = tmp_path / "broken"
    Trainer(tiny_config(broken, schedule={"epochs": 1, "milestones": [1]})).fit()
    # continue the same run to 2 epochs, as if it had been stopped after epoch 1
    summary = Trainer(tiny_config(broken), resume=True).fit()
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(broken / "last.pt")
    assert a["epoch"] == b["epoch"] == 1 and summary["epochs"] == 2
    for key, value in a["distiller"].items():
        assert torch.equal(value, b["distiller"][key]), key
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    rows = list(csv.DictReader(open(broken / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_resume_after_kill_mid_epoch_and_finished_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_config(out)
    straight = tmp_path / "straight"
    Trainer(tiny_config(straight)).fit()
    import kdlab.training.trainer as trainer_mod

    real = trainer_mod.Trainer._train_epoch

    def killed_in_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).fit()
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    Trainer(cfg, resume=True).fit()
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(out / "last.pt")
    assert all(torch.equal(v, b["distiller"][k]) for k, v in a["distiller"].items())
    before = (out / "last.pt").read_bytes()
    summary = Trainer(cfg, resume=True).fit()  # finished: nothing changes
    assert summary["epochs"] == 2 and (out / "last.pt").read_bytes() == before


def test_existing_out_dir_is_refused(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(out, schedule={"epochs": 1, "milestones": [1]})).fit()
    with pytest.raises(UserError, match="--resume"):
        Trainer(tiny_config(out)).fit()
    with pytest.raises(UserError, match="does not exist"):
        Trainer(tiny_config(tmp_path / "nothing"), resume=True).fit()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, method={"name": CE, "nan_from_epoch": 1})
    with pytest.raises(UserError, match=r"NaN or infinite.*l2.*optim\.lr"):
        Trainer(cfg).fit()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["distiller"].values() if v.is_floating_point())
    assert not list(out.glob(".*.tmp"))


def test_distill_from_teacher_and_teacher_errors(tmp_path):
    teacher_dir = tmp_path / "teacher"
    Trainer(tiny_config(teacher_dir, schedule={"epochs": 1, "milestones": [1]})).fit()
    model = {"student": MODEL, "teacher": MODEL, "teacher_checkpoint": str(teacher_dir / "best.pt")}
    summary = Trainer(tiny_config(tmp_path / "kd", model=model, method={"name": KD},
                                  train={"amp": "bf16", "channels_last": True})).fit()
    assert set(summary["final_losses"]) == {"ce", "kd"}
    missing = dict(model, teacher_checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="train the teacher first"):
        Trainer(tiny_config(tmp_path / "kd2", model=missing, method={"name": KD})).fit()
    # the teacher was trained on 10 classes; a 5-class student data set must be refused
    other = engine_tiny(num_classes=5)
    with pytest.raises(UserError, match="do not fit"):
        load_weights(teacher_dir / "best.pt", other.net)
    ckpt = load_checkpoint(teacher_dir / "best.pt")
    ckpt["models"]["student"]["num_classes"] = 100
    torch.save(ckpt, tmp_path / "t100.pt")
    wrong = dict(model, teacher_checkpoint=str(tmp_path / "t100.pt"))
    with pytest.raises(UserError, match="num_classes=100"):
        Trainer(tiny_config(tmp_path / "kd3", model=wrong, method={"name": KD})).fit()


def test_crd_draws_class_negatives_from_the_labels_the_trainer_hands_over(tmp_path):
    """CRD's default negatives are of other classes (the authors' loader): the trainer gives
    the method the training labels of an in-memory dataset."""
    teacher_dir = tmp_path / "teacher"
    Trainer(tiny_config(teacher_dir, schedule={"epochs": 1, "milestones": [1]})).fit()
    model = {"student": MODEL, "teacher": MODEL, "teacher_checkpoint": str(teacher_dir / "best.pt")}
    trainer = Trainer(tiny_config(tmp_path / "crd", model=model,
                                  method={"name": "crd", "num_negatives": 16, "feat_dim": 8},
                                  schedule={"epochs": 1, "milestones": [1]}))
    summary = trainer.fit()
    assert set(summary["final_losses"]) == {"ce", "crd"}
    memory = trainer.run.distiller.memory
    assert memory.negatives == "class"
    assert torch.equal(memory.labels.cpu(), trainer.run.loaders.train.labels.cpu())


def test_load_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file
    a, b = engine_tiny(num_classes=10), engine_tiny(num_classes=10)
    state = {k: v.contiguous() for k, v in a.net.state_dict().items()}
    save_file(state, tmp_path / "a.safetensors")
    load_weights(tmp_path / "a.safetensors", b.net)
    assert all(torch.equal(v, b.net.state_dict()[k]) for k, v in a.net.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="safetensors"):
        load_weights(tmp_path / "bad.safetensors", b.net)
    with pytest.raises(UserError, match="does not exist"):
        load_weights(tmp_path / "none.pt", b.net)


def test_schedules_with_warmup():
    from kdlab.core.config import ScheduleConfig

    p = torch.nn.Parameter(torch.zeros(1))

    def lrs(**kw):
        opt = torch.optim.SGD([p], lr=1.0)
        sched = build_scheduler(ScheduleConfig(**kw), opt)
        out = []
        for _ in range(kw["epochs"]):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(name="multistep", epochs=5, milestones=[2, 4], gamma=0.1) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])
    assert lrs(name="multistep", epochs=5, milestones=[3], warmup_epochs=2) == pytest.approx(
        [1 / 3, 2 / 3, 1, 0.1, 0.1])
    cos = lrs(name="cosine", epochs=4)
    assert cos[0] == 1 and cos[2] == pytest.approx(0.5) and cos == sorted(cos, reverse=True)
    assert lrs(name="constant", epochs=3) == [1, 1, 1]
    with pytest.raises(UserError, match="warm-up"):
        lrs(name="multistep", epochs=5, milestones=[1], warmup_epochs=2)


@pytest.mark.parametrize("key,value,match", [
    ("amp", "fp8", "train.amp"), ("progress", "fancy", "train.progress"),
    ("eval_every", 0, "eval_every"),
])
def test_bad_train_settings(tmp_path, key, value, match):
    with pytest.raises(UserError, match=match):
        Trainer(tiny_config(tmp_path / "r", train={key: value})).fit()
    assert not (tmp_path / "r").exists()


def test_fp16_eval_every_max_steps_and_lines(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(out, schedule={"name": "constant", "epochs": 3},
                      train={"amp": "fp16", "eval_every": 2, "max_steps_per_epoch": 2,
                             "progress": "lines"})
    Trainer(cfg).fit()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [bool(r["val_student_top1"]) for r in rows] == [False, True, True]
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["scaler"]  # the GradScaler's state is saved for fp16
    assert ckpt["optimizer"]["state"][0]["momentum_buffer"] is not None
    printed = capsys.readouterr().out
    assert "epoch 3: lr 0.1" in printed and "val_student_top1" in printed


def test_multi_network_methods_record_every_network(tmp_path):
    cfg = tiny_config(tmp_path / "dml", method={"name": "dml"},
                      schedule={"epochs": 1, "milestones": [1]})
    summary = Trainer(cfg).fit()
    ckpt = load_checkpoint(tmp_path / "dml" / "last.pt")
    assert set(summary["networks"]) == set(ckpt["exported"]) == set(ckpt["models"])
    assert len(ckpt["models"]) == 2


def test_real_ce_teacher_then_kd_student(tmp_path):
    one = {"epochs": 1, "milestones": [1]}
    Trainer(tiny_config(tmp_path / "t", method={"name": "ce"}, schedule=one)).fit()
    model = {"student": MODEL, "teacher": MODEL,
             "teacher_checkpoint": str(tmp_path / "t" / "best.pt")}
    summary = Trainer(tiny_config(tmp_path / "s", model=model, schedule=one,
                                  method={"name": "kd", "temperature": 4.0})).fit()
    assert {"ce", "kd"} <= set(summary["final_losses"])
    assert load_checkpoint(tmp_path / "s" / "best.pt")["config"]["method"]["name"] == "kd"


def test_seed_all_gives_each_rank_its_own_stream_and_rank_0_the_single_process_one():
    from kdlab.training.trainer import seed_all

    def draw(*args):
        seed_all(*args)
        return torch.rand(4)

    assert torch.equal(draw(7, 3), draw(7, 3, 0))
    torch.manual_seed(7 * 1_000_003 + 3 + 1)
    want = torch.rand(4)
    assert torch.equal(draw(7, 3), want)  # unchanged for single-process runs
    assert not torch.equal(draw(7, 3, 0), draw(7, 3, 1))
    assert not torch.equal(draw(7, 3, 1), draw(7, 4, 1))

"""`kdlab eval` / `kdlab export` for methods whose networks are not one plain model: SimKD
(student + projector + reused teacher head), FCFD with ``simkd: true``, DML (several peers).

Tiny runs on the synthetic data (1 epoch of 2 steps): eval reproduces the run's own last
evaluation to the printed digit, and exported files load (kdlab.export.load_exported) into
networks with the trainer's weights and outputs identical to the restored run's networks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.cli.commands.common import load_run_checkpoint, restore_run
from kdlab.errors import UserError
from kdlab.export import load_exported, read_exported
from kdlab.methods import METHODS
from support.cli import error_of, files_under, recipe

RUNS = ("simkd", "fcfd_simkd", "dml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A ce teacher, then SimKD, FCFD+SimKD and DML runs; the teacher checkpoint the
    distilled runs used is deleted afterwards (eval and export must not need it)."""
    tmp = tmp_path_factory.mktemp("methods")
    teacher = recipe(tmp, "teacher.yaml", model={"student": "resnet20"})
    assert main(["train", str(teacher), "--out", str(tmp / "teacher")]) == 0
    gone = tmp / "gone_teacher.pt"
    shutil.copy(tmp / "teacher" / "best.pt", gone)
    with_teacher = {"student": "resnet8", "teacher": "resnet20",
                    "teacher_checkpoint": str(gone)}
    simkd = recipe(tmp, "simkd.yaml", method={"name": "simkd"}, model=with_teacher)
    assert main(["distill", str(simkd), "--out", str(tmp / "simkd")]) == 0
    fcfd = recipe(tmp, "fcfd.yaml", method={"name": "fcfd", "simkd": True}, model=with_teacher)
    assert main(["distill", str(fcfd), "--out", str(tmp / "fcfd_simkd")]) == 0
    dml = recipe(tmp, "dml.yaml", method={"name": "dml"})
    assert main(["train", str(dml), "--out", str(tmp / "dml")]) == 0
    gone.unlink()
    return tmp


def last_eval(run: Path, metric: str = "top1") -> dict[str, float]:
    """``{network: value}`` of the run's last evaluation (top1 | top5 | loss), from the
    history in its last.pt (full precision; metrics.csv rounds)."""
    row = load_run_checkpoint(run / "last.pt")["history"][-1]
    tail = f"_{metric}"
    return {k[len("val_"):-len(tail)]: float(v) for k, v in row.items()
            if k.startswith("val_") and k.endswith(tail) and v is not None}


def printed(out: str) -> dict[str, tuple[float, float]]:
    """``{network: (top-1, top-5)}`` from `kdlab eval`'s table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("network")) + 1
    return {line.split()[0]: (float(line.split()[2]), float(line.split()[3]))
            for line in lines[start:] if line.strip()}


@pytest.mark.parametrize("name", RUNS)
def test_eval_reproduces_the_runs_last_evaluation(runs, capsys, name):
    expected = last_eval(runs / name)
    assert expected, "the run logged no evaluation"
    if name == "dml":
        assert set(expected) == {"student", "peer1"}
    capsys.readouterr()
    assert main(["eval", str(runs / name), "--which", "last"]) == 0
    got = printed(capsys.readouterr().out)
    assert set(got) == set(expected)
    top5 = last_eval(runs / name, "top5")
    for net, top1 in expected.items():
        assert got[net] == (round(top1, 2), round(top5[net], 2)), net


@pytest.mark.parametrize("name", RUNS)
def test_restored_networks_reproduce_the_runs_validation_loss(runs, name):
    """Top-1 of a 2-step run is near chance; the mean validation loss pins the weights."""
    from kdlab.tasks.classification.task import classifier_metrics as evaluate

    r = restore_run(runs / name, "last", [], device="cpu")
    expected = last_eval(runs / name, "loss")
    assert set(expected) == set(r.distiller.evaluated())
    for net_name, net in r.distiller.evaluated().items():
        loss = evaluate(net, r.val, device=r.device)["loss"]
        assert loss == pytest.approx(expected[net_name], rel=1e-6, abs=1e-7), net_name


def test_eval_names_the_composite_network(runs, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs / "simkd"), "--which", "last"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("student "))
    assert row.split()[1] == "simkd(resnet8)"


@pytest.mark.parametrize("name", RUNS)
def test_export_loads_with_the_runs_weights_and_outputs(runs, capsys, name):
    run = runs / name
    out = runs / f"export_{name}" / "net.safetensors"
    assert main(["export", str(run), "--which", "last", "--out", str(out)]) == 0
    restored = restore_run(run, "last", [], load_data=False).distiller
    evaluated = restored.evaluated()
    saved = load_run_checkpoint(run / "last.pt")["exported"]  # what the trainer wrote
    names = list(restored.exported())
    files = {n: out if len(names) == 1 else out.with_name(f"net-{n}.safetensors")
             for n in names}
    assert files_under(out.parent) == {p.name for p in files.values()}  # no temp files
    x = torch.randn(5, 3, 16, 16)
    for n, path in files.items():
        tensors, meta = read_exported(path)
        assert meta["name"] == n
        # the file holds exactly what the trainer saved for this network
        assert set(tensors) == set(saved[n])
        for key, value in saved[n].items():
            assert torch.equal(tensors[key], value), key
        net = load_exported(path)
        assert not net.training
        with torch.no_grad():
            assert torch.equal(net(x), evaluated[n](x)), n
        if name == "dml":
            assert meta["kind"] == "model" and meta["model"] == "resnet8"
        else:
            assert meta["kind"] == "composite" and meta["method"] == name.split("_")[0]


def test_plain_dml_export_needs_no_kdlab_run_machinery(runs):
    from safetensors.torch import load_file

    from kdlab.models import build_model

    path = runs / "dml" / "peer1.safetensors"
    assert main(["export", str(runs / "dml")]) == 0  # default names, beside the checkpoint
    assert (runs / "dml" / "student.safetensors").is_file() and path.is_file()
    _, meta = read_exported(path)
    net = build_model(meta["model"], num_classes=int(meta["num_classes"]),
                      in_channels=int(meta["in_channels"]),
                      input_size=int(meta["input_size"])).net.eval()
    net.load_state_dict(load_file(str(path)))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), load_exported(path)(x))


def test_load_exported_keeps_the_global_rng(runs):
    path = runs / "composite.safetensors"
    assert main(["export", str(runs / "simkd"), "--out", str(path)]) == 0
    state = torch.random.get_rng_state()
    net = load_exported(path)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert type(net).__name__ == "SimKDStudent"


def test_restore_refuses_a_config_that_does_not_fit(runs, capsys):
    msg = error_of(capsys, "eval", str(runs / "simkd"), "--which", "last",
                   "--set", "model.student=resnet20")
    assert "do not fit" in msg


def test_load_exported_refuses_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"author": "someone"})
    with pytest.raises(UserError, match="not written by `kdlab export`"):
        load_exported(foreign)
    with pytest.raises(UserError, match="does not exist"):
        load_exported(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors at all")
    with pytest.raises(UserError, match="not a readable"):
        load_exported(broken)


def test_a_composite_export_is_refused_as_a_teacher(runs, capsys):
    path = runs / "composite_teacher.safetensors"
    assert main(["export", str(runs / "simkd"), "--out", str(path)]) == 0
    kd = recipe(runs, "kd_from_composite.yaml", method={"name": "kd"},
                model={"teacher": "resnet20", "teacher_checkpoint": str(path)})
    out = runs / "kd_from_composite"
    msg = error_of(capsys, "distill", str(kd), "--out", str(out))
    assert "composite simkd network" in msg
    assert not out.exists()


# --------------------------------------------------------------- every method, in-process
TINY_OPTIONS: dict[str, dict] = {
    "crd": {"num_negatives": 8, "feat_dim": 16, "negatives": "uniform"},  # no labels here
    "online_fcfd": {"teacher": "resnet8"},
}


@pytest.mark.parametrize("method", [m for m in METHODS.names()  # segmentation-only methods
                                    if METHODS.get(m).runs_on("classification")])  # need a seg run
def test_every_method_restores_and_exports_its_networks(method, tmp_path):
    """A distiller rebuilt from the config (other random init, another random teacher) with
    the state_dict loaded gives the same evaluated networks; every exported network
    round-trips through write_exported / load_exported."""
    from types import SimpleNamespace

    from kdlab.core.config import RunConfig, build_dataclass
    from kdlab.training.build import build_distiller_from_config, restore_distiller
    from kdlab.training.exported_file import export_metadata, write_exported

    tree = {"model": {"student": "resnet8"},
            "method": {"name": method, **TINY_OPTIONS.get(method, {})}}
    if METHODS.get(method).needs_teacher:
        tree["model"]["teacher"] = "resnet20"
    cfg = build_dataclass(RunConfig, tree, where="test")
    info = SimpleNamespace(name="synthetic", num_classes=10, in_channels=3, input_size=16,
                           train_size=64)
    torch.manual_seed(0)
    a = build_distiller_from_config(cfg, info, architecture_only=True)
    x = torch.randn(8, 3, 16, 16)
    a.train()
    with torch.no_grad():  # moves BatchNorm running statistics away from their init
        a(x, torch.arange(8) % 10, torch.arange(8))
    a.eval()
    torch.manual_seed(1)
    b = restore_distiller(cfg, info, a.state_dict())
    with torch.no_grad():
        for name, net in a.evaluated().items():
            assert torch.equal(net(x), b.evaluated()[name](x)), f"{method}: {name}"
        for name, net in b.exported().items():
            path = tmp_path / f"{name}.safetensors"
            write_exported(net, export_metadata(net, name, cfg, info), path)
            assert torch.equal(load_exported(path)(x), net.eval()(x)), f"{method}: {name}"

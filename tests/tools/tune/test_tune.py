"""kdlab tune: --space parsing and its one-sentence errors; a study of tiny trials on the
synthetic data runs, prunes, writes its tables, plots and a best recipe that `kdlab train`
runs; a conditional method space; kill -9 of the tune process mid-trial, then the same
command resumes from the database and the dead trial's rerun continues its run folder to the
weights of an uninterrupted run; two processes share one study; Hyperband's brackets span the
epochs the trials run, and a Hyperband study in a database elsewhere (--storage) prunes and
resumes there."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdlab.cli import main
from kdlab.core.config import load_config
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.trainer import Trainer
from support.training import CE, KD, MODEL, registered, tiny_config

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install "
                             "'kdlab[tune]')")

from kdlab.tools.tune import study as study_module  # noqa: E402
from kdlab.tools.tune.space import assign, parse_space, sample  # noqa: E402

TESTS = Path(__file__).resolve().parents[2]  # tests/: the support package
SRC = TESTS.parent / "src"


@pytest.fixture(autouse=True)
def _entries():
    with registered():
        yield


def write_recipe(folder: Path, name: str = "recipe.yaml", **sections) -> Path:
    """A tiny run on the synthetic data (4 steps an epoch, 64 validation images)."""
    tree = {
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
                 "train_subset": 128, "val_subset": 64},
        "model": {"student": MODEL},
        "method": {"name": CE},
        "optim": {"lr": 0.1},
        "schedule": {"name": "constant", "epochs": 3},
        "train": {"device": "cpu", "progress": "none", "threads": 1},
    }
    for key, value in sections.items():
        tree[key] = value if key == "method" else {**tree.get(key, {}), **value}
    path = folder / name
    path.write_text(yaml.safe_dump(tree))
    return path


def error_of(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlab: error:"), lines
    return lines[0]


def trials_csv(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "trials.csv")))


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


# --------------------------------------------------------------------- the space
@pytest.mark.parametrize("space, expected", [
    ("optim.lr", "has no '='"),
    ("optim.lr=0.1:", "a range is LOW:HIGH"),
    ("optim.lr=a:1", "'a' is not a number"),
    ("optim.lr=0.1:1:cube", "after LOW:HIGH comes log, linear or a STEP"),
    ("optim.lrr=0.1:1", "Did you mean 'lr'"),
    ("optim.lr=0.5:0.1", "empty range"),
    ("optim.lr=0.1:0.1", "empty range"),
    ("optim.lr=0:1:log", "log range needs LOW > 0"),
    ("optim.lr=-1:1", "optim.lr must be greater than 0"),
    ("optim.lr=0.1:0.2:0.5", "STEP must be above 0"),
    ("data.batch_size=8.5:32", "integer setting"),
    ("optim.name=1:2", "not a number"),
    ("method.name=kd", "neither a range nor a choice"),
    ("optim.momentum=0.5,0.5", "twice"),
    ("optim.momentum=0.5,", "empty choice"),
    ("schedule.epochs=1:3", "give --epochs"),
    ("train.out_dir=a,b", "own run folder"),
    ("method.temperature=1:8", "Unknown key method._engine_ce.temperature"),
    ("model.student=_engine_tiny,resnet99", "Unknown model 'resnet99'"),
])
def test_bad_spaces_are_one_sentence_and_leave_nothing(tmp_path, capsys, space, expected):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "tune"
    message = error_of(capsys, "tune", str(recipe), "--space", space, "--out", str(out))
    assert expected in message and "--space" in message, message
    assert not out.exists()


def test_other_tune_mistakes_are_one_sentence(tmp_path, capsys, monkeypatch):
    recipe = str(write_recipe(tmp_path))
    space = ["--space", "optim.lr=0.01:0.1"]
    assert "at least one --space" in error_of(capsys, "tune", recipe)
    assert "--trials must be at least 0" in error_of(capsys, "tune", recipe, *space,
                                                     "--trials", "-1")
    assert "--out instead" in error_of(capsys, "tune", recipe, *space,
                                       "--set", "train.out_dir=x")
    assert "searches optim.lr" in error_of(capsys, "tune", recipe, *space,
                                           "--space", "optim.lr+optim.momentum=0.1:0.5")
    assert "none of the searched methods" in error_of(
        capsys, "tune", recipe, "--space", f"method.name={CE},_engine_adv",
        "--space", "method.temperature=1:8")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna" else real(name, *a))
    assert "pip install 'kdlab[tune]'" in error_of(capsys, "tune", recipe, *space)


def test_ranges_take_the_settings_type_and_methods_their_own_settings(tmp_path):
    base = load_config(write_recipe(tmp_path))
    lr, batch, tied, method, weight, temperature = parse_space(
        ["optim.lr=1:2", "data.batch_size=8:32:8", "optim.momentum+optim.weight_decay=0:0.5",
         f"method.name={CE},{KD}", "method.weight=0.5:1", "method.temperature=1:8:log"], base)
    assert (lr.kind, batch.kind, batch.step) == ("float", "int", 8)  # lr is a float setting
    assert tied.keys == ("optim.momentum", "optim.weight_decay")
    assert method.kind == "choice" and method.choices == (CE, KD)
    assert weight.methods == (CE,) and temperature.methods == (KD,)
    space = [lr, method, weight, temperature]
    ce = sample(optuna.trial.FixedTrial({"optim.lr": 1.5, "method.name": CE,
                                         "method.weight": 0.7}), space)
    assert ce == {"method.name": CE, "optim.lr": 1.5, "method.weight": 0.7}
    kd = sample(optuna.trial.FixedTrial({"optim.lr": 1.5, "method.name": KD,
                                         "method.temperature": 2.0}), space)
    assert kd == {"method.name": KD, "optim.lr": 1.5, "method.temperature": 2.0}
    # the recipe's options of another method go: _engine_kd has no `weight`
    tree = {"method": {"name": CE, "weight": 0.3}, "optim": {"lr": 0.1}}
    assert assign(tree, kd)["method"] == {"name": KD, "temperature": 2.0}
    assert assign(tree, {"optim.momentum": 0.5})["method"] == {"name": CE, "weight": 0.3}


# --------------------------------------------------------------------- a study
def test_a_study_prunes_and_hands_back_a_runnable_recipe(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "tune"
    # method.weight=0 trains nothing (chance level): those trials fall below the median
    command = ["tune", str(recipe), "--space", "method.weight=0.0,1.0",
               "--space", "optim.lr=0.05:0.2:log", "--trials", "10", "--epochs", "3",
               "--sampler", "random", "--seed", "3", "--out", str(out)]
    assert main(command) == 0
    rows = trials_csv(out)
    assert [int(r["trial"]) for r in rows] == list(range(10))
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned and all(int(r["epochs"]) < 3 for r in pruned)
    for row in rows:  # every trial is an ordinary run folder with its own values
        folder = out / row["run"]
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert saved["method"]["weight"] == float(row["method.weight"])
        assert saved["optim"]["lr"] == pytest.approx(float(row["optim.lr"]))
        metrics = list(csv.DictReader(open(folder / "metrics.csv")))
        assert len(metrics) == int(row["epochs"]) and (folder / "last.pt").is_file()
        if row["state"] == "complete":
            best = max(float(m["val_student_top1"]) for m in metrics)
            assert float(row["best top-1"]) == pytest.approx(best, abs=1e-3)
    for plot in ("history.png", "importance.png", "parallel.png", "intermediate.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
    assert "| trial | state | best top-1 |" in (out / "trials.md").read_text()
    # the best recipe runs as it is, and is the best trial's settings
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["best top-1"]))
    recipe_text = (out / "best.yaml").read_text()
    assert f"kdlab train {out / 'best.yaml'}" in recipe_text
    capsys.readouterr()
    assert main(["train", str(out / "best.yaml")]) == 0
    again = yaml.safe_load((out / "best" / "config.yaml").read_text())
    assert again["method"]["weight"] == float(best["method.weight"])
    assert again["optim"]["lr"] == pytest.approx(float(best["optim.lr"]))
    assert again["schedule"]["epochs"] == 3
    # the same command again: the study is complete, nothing runs; a larger --trials extends it
    assert main(command) == 0 and "ran 0 trial(s)" in capsys.readouterr().out
    assert main([*command[:-6], "--trials", "12", *command[-4:]]) == 0
    assert len(trials_csv(out)) == 12
    # another search into the same study is refused
    assert "searches something else" in error_of(
        capsys, "tune", str(recipe), "--space", "optim.lr=0.05:0.3:log", "--trials", "12",
        "--epochs", "3", "--out", str(out))


def test_hyperband_spans_the_epochs_the_trials_run(tmp_path, monkeypatch):
    recipe = str(write_recipe(tmp_path, schedule={"epochs": 9}))
    made, real = [], study_module.build_pruner
    monkeypatch.setattr(study_module, "build_pruner",
                        lambda s, epochs: made.append(real(s, epochs)) or made[-1])
    # --trials 0 opens the study (and its pruner) and runs nothing
    for extra in ([], ["--epochs", "4"], ["--prune-from", "2"]):
        assert main(["tune", recipe, "--space", "optim.lr=0.05:0.2", "--pruner", "hyperband",
                     "--trials", "0", "--out", str(tmp_path / f"tune{len(made)}"), *extra]) == 0
    # without --epochs the trials run the recipe's 9 epochs: Hyperband's last rung is 9
    assert [(p._min_resource, p._max_resource) for p in made] == [(1, 9), (1, 4), (2, 9)]


def test_a_hyperband_study_in_a_database_elsewhere(tmp_path, capsys):
    # 3 epochs, no --epochs: Hyperband spans epochs 1-3. At lr 0.3 a trained network is
    # above chance after epoch 1 (17 % against 9 % for weight 0, which trains nothing).
    recipe = str(write_recipe(tmp_path, optim={"lr": 0.3}))
    out, db = tmp_path / "tune", tmp_path / "elsewhere" / "s.db"
    storage = f"sqlite:///{db}"
    # 2 brackets (3^0 and 3^1 epochs before the first cut). Trials of study "study" fall in
    # brackets 0, 0, 1 (crc32 of "study_N"); seed 9 draws weight 1, 0, then, resumed, 0.
    # Trial 1 (weight 0: untrained) is cut after epoch 1, below trial 0 of its bracket;
    # trial 2, as poor, runs its 3 epochs: its bracket's first cut would come at epoch 3.
    command = ["tune", recipe, "--space", "method.weight=0.0,1.0", "--pruner", "hyperband",
               "--sampler", "random", "--seed", "9", "--storage", storage, "--study", "study",
               "--out", str(out)]
    assert main([*command, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="study", storage=storage)
    assert [(t.params["method.weight"], t.state.name, sorted(t.intermediate_values))
            for t in study.trials] == [(1.0, "COMPLETE", [1, 2, 3]), (0.0, "PRUNED", [1])]
    assert not (out / "study.db").exists()
    capsys.readouterr()
    assert main([*command, "--trials", "3"]) == 0  # the same study, resumed from s.db
    assert f"in {storage}: 2 of 3 trials so far" in capsys.readouterr().out
    study = optuna.load_study(study_name="study", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study.trials[2].params["method.weight"] == 0.0
    assert sorted(study.trials[2].intermediate_values) == [1, 2, 3]
    assert not (out / "study.db").exists() and len(trials_csv(out)) == 3


def test_a_conditional_method_study(tmp_path):
    teacher = tmp_path / "teacher"
    Trainer(tiny_config(teacher, schedule={"name": "constant", "epochs": 1})).fit()
    recipe = write_recipe(tmp_path, model={"student": MODEL, "teacher": MODEL,
                                           "teacher_checkpoint": str(teacher / "best.pt")})
    out = tmp_path / "tune"
    assert main(["tune", str(recipe), "--space", f"method.name={CE},{KD}",
                 "--space", "method.temperature=1:8:log", "--space", "method.weight=0.5:1",
                 "--trials", "6", "--epochs", "2", "--pruner", "none", "--sampler", "random",
                 "--seed", "0", "--out", str(out)]) == 0
    study = study_of(out)
    chosen = {t.params["method.name"] for t in study.trials}
    assert chosen == {CE, KD}
    for t in study.trials:
        method = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())[
            "method"]
        if t.params["method.name"] == KD:
            assert set(t.params) == {"method.name", "method.temperature"}
            assert method == {"name": KD, "temperature": t.params["method.temperature"]}
        else:
            assert set(t.params) == {"method.name", "method.weight"}
            assert method == {"name": CE, "weight": t.params["method.weight"]}
    best = (out / "best.yaml").read_text()
    command = "distill" if study.best_trial.params["method.name"] == KD else "train"
    assert f"kdlab {command} " in best
    assert main([command, str(out / "best.yaml")]) == 0


# --------------------------------------------------------------------- processes
CHILD = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {src!r}]
from support.training import registered
from kdlab.cli import main
import kdlab.training.trainer as trainer_mod

# a process started in the background may inherit an ignored SIGINT: restore Ctrl-C
signal.signal(signal.SIGINT, signal.default_int_handler)
kill, how = {kill!r}, {how!r}
if kill:  # signal this process in the second epoch of the trial whose folder ends so
    real = trainer_mod.Trainer._train_epoch

    def train_epoch(self, epoch, *args, **kwargs):
        if str(self.out_dir).endswith(kill) and epoch == 1:
            os.kill(os.getpid(), how)
        return real(self, epoch, *args, **kwargs)

    trainer_mod.Trainer._train_epoch = train_epoch
with registered():
    sys.exit(main({args!r}))
"""


def child(args: list[str], kill: str = "", how: int = signal.SIGKILL) -> subprocess.Popen:
    """``kdlab tune ARGS`` in a fresh process (the test model and methods registered)."""
    script = CHILD.format(tests=str(TESTS), src=str(SRC), kill=kill, how=int(how), args=args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("how, code, left", [
    (signal.SIGKILL, -signal.SIGKILL, ["RUNNING"]),  # found dead by its free worker lock
    (signal.SIGINT, 130, ["FAIL", "WAITING"]),  # Ctrl-C: failed and queued again at once
])
def test_killed_mid_trial_then_the_same_command_resumes(tmp_path, capsys, how, code, left):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "tune"
    command = ["tune", str(recipe), "--space", "optim.lr=0.05:0.2:log", "--trials", "4",
               "--epochs", "3", "--pruner", "none", "--seed", "0", "--out", str(out)]
    proc = child(command, kill="0002", how=how)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, output
    study = study_of(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", *left]
    dead = study.trials[2]
    killed_rows = list(csv.DictReader(open(out / "trials" / "0002" / "metrics.csv")))
    assert len(killed_rows) == 1  # epoch 1 done and saved, killed in epoch 2

    assert main(command) == 0  # the same command, in a new process: resumes from the database
    printed = capsys.readouterr().out
    if how == signal.SIGKILL:
        assert "trial 2 was left running by a process that died" in printed
    study = study_of(out)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    rerun = study.trials[3]
    assert rerun.user_attrs["rerun_of"] == 2 and rerun.params == dead.params
    assert "continues trial 2" in printed
    assert sorted(rerun.intermediate_values) == [1, 2, 3]  # epoch 1 reported again
    folder = out / "trials" / "0003"
    assert not (out / "trials" / "0002").exists() and Path(rerun.user_attrs["run_dir"]) == folder
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0]["val_student_top1"] == killed_rows[0]["val_student_top1"]
    # the continued run ends with the weights of the same trial run straight through
    cfg = load_config(folder / "config.yaml", [f"train.out_dir={tmp_path / 'straight'}"])
    Trainer(cfg).fit()
    continued = load_checkpoint(folder / "last.pt")["distiller"]
    for key, value in load_checkpoint(tmp_path / "straight" / "last.pt")["distiller"].items():
        assert torch.equal(value, continued[key]), key
    table = (out / "trials.md").read_text()
    assert "its process died; run again as trial 3" in table and "reruns trial 2" in table
    assert not any((out / "workers").iterdir())  # both processes' locks are gone


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "tune"
    command = ["tune", str(recipe), "--space", "optim.lr=0.02:0.2:log", "--trials", "6",
               "--epochs", "2", "--pruner", "none", "--out", str(out)]
    procs = [child([*command, "--seed", str(seed)]) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = trials_csv(out)
    assert 6 <= len(rows) <= 7 and all(r["state"] == "complete" for r in rows)
    numbers = [int(r["trial"]) for r in rows]
    assert numbers == sorted(set(numbers))
    assert len({r["process"] for r in rows}) == 2, rows  # both ran trials of the one study
    assert {r["run"] for r in rows} == {f"trials/{n:04d}" for n in numbers}


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, capsys):
    recipe = write_recipe(tmp_path, method={"name": CE, "nan_from_epoch": 1})
    out = tmp_path / "tune"
    # every trial's loss turns NaN in epoch 2: three failures in a row stop the process
    message = error_of(capsys, "tune", str(recipe), "--space", "optim.lr=0.05:0.2",
                       "--trials", "5", "--epochs", "2", "--out", str(out))
    assert "3 trials in a row failed" in message and "NaN" in message
    assert [t.state.name for t in study_of(out).trials] == ["FAIL"] * 3
    rows = trials_csv(out)  # the table is written all the same
    assert [r["state"] for r in rows] == ["fail"] * 3
    assert all("NaN" in r["note"] for r in rows) and not (out / "best.yaml").exists()


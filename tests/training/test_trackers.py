"""Experiment trackers (train.loggers): an MLflow run that MLflow's own client reads back
(config, every per-epoch metric, the report and the exported student), continued on --resume
and ended as failed or killed; a W&B offline run folder whose records hold the same numbers;
one error sentence for an unknown logger or a missing package."""

from __future__ import annotations

import csv
import struct
import time
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.errors import UserError
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.trackers import check_loggers
from kdlab.training.trainer import Trainer
from support.training import MODEL, registered, tiny_config


@pytest.fixture(autouse=True)
def _entries():
    with registered():
        yield


def metrics(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "metrics.csv")))


# --------------------------------------------------------------------- settings
def test_unknown_repeated_and_missing_loggers_are_one_sentence(monkeypatch, tmp_path, capsys):
    with pytest.raises(UserError, match="Did you mean 'mlflow'"):
        check_loggers(["csv", "mlfow"])
    with pytest.raises(UserError, match="more than once"):
        check_loggers(["csv", "csv"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'kdlab\[wandb\]'"):
        check_loggers(["wandb"])
    # through the command line: one line, nothing written
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{name: synthetic}}\nmodel: {{student: {MODEL}}}\n"
                      f"train: {{out_dir: {tmp_path / 'run'}, device: cpu}}\n")
    assert main(["train", str(recipe), "--set", "train.loggers=[csv,wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kdlab[wandb]" in err[0], err
    assert not (tmp_path / "run").exists()


def test_without_tensorboard_in_the_list_no_events_are_written(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(out, train={"device": "cpu", "out_dir": str(out), "progress": "none",
                                    "loggers": ["csv"]})).fit()
    assert (out / "metrics.csv").is_file() and not (out / "tensorboard").exists()


# --------------------------------------------------------------------- MLflow
def mlflow_config(out: Path, uri: str, **sections):
    train = {"device": "cpu", "out_dir": str(out), "progress": "none",
             "loggers": ["csv", "mlflow"], "mlflow_uri": uri, "experiment": "trackers-test"}
    return tiny_config(out, train=train, **sections)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite store for the module (MLflow's schema migrations take seconds)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'kdlab[mlflow]')")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def the_run(uri: str, out: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trackers-test")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`kdlab.out_dir` = '{out.resolve()}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def test_mlflow_client_reads_back_config_metrics_report_and_student(tmp_path, mlflow_store):
    from kdlab.export import load_exported

    out = tmp_path / "run"
    summary = Trainer(mlflow_config(out, mlflow_store)).fit()
    client, run = the_run(mlflow_store, out)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["method.name"] == "_engine_ce" and float(params["optim.lr"]) == 0.1
    assert params["schedule.milestones"] == "[1]" and params["train.loggers"] == "['csv', 'mlflow']"
    rows = metrics(out)
    for key in ("val_student_top1", "loss_ce", "lr", "train_top1"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows],
                                                           rel=1e-5), key
    assert run.data.metrics["best_top1"] == pytest.approx(summary["best_top1"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report", "exported"} <= names
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/curves.png", "report/metrics.csv"} <= report
    local = Path(client.download_artifacts(run.info.run_id, "exported/student.safetensors",
                                           str(tmp_path / "down")))
    net = load_exported(local)  # the best epoch's student, as `kdlab export` writes it
    best = load_checkpoint(out / "best.pt")["exported"]["student"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, best[key]), key
    assert (out / "student.safetensors").is_file() and (out / "trackers.json").is_file()
    # artifacts beside the SQLite file, not in the working folder
    store = Path(mlflow_store[len("sqlite:///"):]).parent
    assert run.info.artifact_uri.startswith((store / "mlruns").as_uri())
    assert not Path("mlruns").exists()


def test_mlflow_run_continues_on_resume(tmp_path, mlflow_store):
    out = tmp_path / "resumed"
    one = {"name": "constant", "epochs": 1}
    Trainer(mlflow_config(out, mlflow_store, schedule=one)).fit()
    Trainer(mlflow_config(out, mlflow_store, schedule={**one, "epochs": 2}), resume=True).fit()
    client, run = the_run(mlflow_store, out)  # still one run
    history = client.get_metric_history(run.info.run_id, "val_student_top1")
    assert [m.step for m in history] == [1, 2] and run.info.status == "FINISHED"


class Stop(Exception):
    run_status = "KILLED"


@pytest.mark.parametrize("error, status", [(RuntimeError, "FAILED"), (Stop, "KILLED")])
def test_a_stopped_run_ends_its_mlflow_run(tmp_path, mlflow_store, error, status):
    out = tmp_path / status
    seen = []

    def on_epoch(row):
        seen.append(row["epoch"])
        raise error("stop here")

    with pytest.raises(error):
        Trainer(mlflow_config(out, mlflow_store), on_epoch=on_epoch).fit()
    assert seen == [1] and (out / "last.pt").is_file()  # stopped after epoch 1's checkpoint
    client, run = the_run(mlflow_store, out)
    assert run.info.status == status
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]


def test_mlflow_local_file_store(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'kdlab[mlflow]')")
    out, store = tmp_path / "run", tmp_path / "mlruns"
    Trainer(mlflow_config(out, str(store))).fit()
    client, run = the_run(str(store), out)
    assert run.info.status == "FINISHED" and "val_student_top1" in run.data.metrics


# --------------------------------------------------------------------- Weights & Biases
def wandb_records(path: Path) -> list:
    """The records of a W&B run file (.wandb): W&B's header, then a LevelDB-style log of
    protobuf ``Record`` messages in 32 KiB blocks (fragments FULL=1, FIRST=2, MIDDLE=3,
    LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'kdlab[wandb]')")
    import json

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    out = tmp_path / "run"
    Trainer(tiny_config(out, train={"device": "cpu", "out_dir": str(out), "progress": "none",
                                    "loggers": ["csv", "wandb"], "experiment": "kdlab-test"})
            ).fit()
    (folder,) = (out / "wandb").glob("offline-run-*")
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]["id"]
    (log,) = folder.glob(f"run-{run_id}.wandb")
    history: dict = {}
    for _ in range(60):  # W&B's service may still be writing the file when finish() returns
        history = {}      # (seen once in a full suite on a loaded machine: no history yet)
        records = wandb_records(log)
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in r.history.item}
                history[items["_step"]] = items
        if len(history) == 2:
            break
        time.sleep(0.5)
    rows = metrics(out)
    assert sorted(history) == [1, 2]
    for row in rows:
        step = int(row["epoch"])
        assert history[step]["val_student_top1"] == pytest.approx(float(row["val_student_top1"]),
                                                                  rel=1e-5)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["method"]["name"] == "_engine_ce" and config["optim"]["lr"] == 0.1
    files = folder / "files"
    for name in ("report/report.md", "report/curves.png", "exported/student.safetensors"):
        assert (files / name).is_file(), name


DDP_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {src!r}]
from support.training import registered, tiny_config
from kdlab.training.trainer import Trainer

with registered():
    Trainer(tiny_config({out!r}, data={{"train_subset": 128, "val_subset": 64}},
                        train={{"device": "cpu", "out_dir": {out!r}, "progress": "none",
                               "loggers": ["csv", "mlflow"], "mlflow_uri": {uri!r},
                               "experiment": "trackers-test"}})).fit()
"""


@pytest.mark.slow
def test_only_rank_0_logs_under_torchrun(tmp_path, mlflow_store):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    script = tmp_path / "ddp_run.py"
    tests = Path(__file__).resolve().parents[1]  # tests/: the support package
    script.write_text(DDP_SCRIPT.format(tests=str(tests), src=str(tests.parent / "src"),
                                        out=str(out), uri=mlflow_store))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, run = the_run(mlflow_store, out)  # one run, not one per process
    history = client.get_metric_history(run.info.run_id, "val_student_top1")
    assert [m.step for m in history] == [1, 2] and run.info.status == "FINISHED"

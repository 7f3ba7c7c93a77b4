"""benchmarks/dense_accuracy.py: a table continues on a machine without its earlier runs."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

FIELDS = ("best_miou", "last_miou", "prev_miou", "last_pixel_acc", "epochs_run", "wall_s",
          "cpu_s", "load_before", "load_after", "command", "label")


@pytest.fixture()
def dense():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        return importlib.import_module("dense_accuracy")
    finally:
        sys.path.pop(0)


def _record(row: str, seed: int, last: float, cpu: float | None = 900.0) -> dict:
    return {"row": row, "label": f"label {row}", "seed": seed, "best_miou": last + 0.5,
            "last_miou": last, "prev_miou": last - 0.25, "last_pixel_acc": 89.5,
            "epochs_run": 15, "wall_s": 1600.0, "cpu_s": cpu, "load_before": "1.0 1.0 1.0",
            "load_after": "2.0 2.0 2.0", "command": f"kdlab distill {row}.yaml --out x"}


def _write(dense, table, runs: Path, results: Path, recs: list[dict]) -> Path:
    for rec in recs:
        run_dir = runs / (f"teacher_{table.teacher}" if rec["row"] == "teacher"
                          else f"{rec['row']}/seed{rec['seed']}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "bench_result.json").write_text(json.dumps(rec))
    args = argparse.Namespace(results=str(results), task="segmentation", threads=1,
                              command="python benchmarks/dense_accuracy.py")
    dense.write_tables(args, table, *dense.finished(table, runs), runs)
    return results / "scenes_seg_accuracy.csv"


def test_finished_runs_come_back_from_the_committed_csv(dense, tmp_path):
    table = dense.TABLES["segmentation"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    recs = [_record("ce", 0, 51.35), _record("kd", 0, 52.69, cpu=None), _record("ce", 1, 51.04)]
    committed = _write(dense, table, runs, results, [_record("teacher", 0, 52.72), *recs])
    shutil.rmtree(runs)  # a new machine: only the committed files are left
    (runs / "kd" / "seed1").mkdir(parents=True)  # a run of this machine, not in the CSV

    assert dense.restore_finished(table, runs, committed) == 3
    assert dense.restore_finished(table, runs, committed) == 0  # nothing is restored twice
    teacher, back = dense.finished(table, runs)
    assert teacher is None  # no teacher run on disk: nothing to check it against
    assert [(r["row"], r["seed"]) for r in back] == [("ce", 0), ("ce", 1), ("kd", 0)]
    for want, got in zip(sorted(recs, key=lambda r: (r["row"], r["seed"])), back, strict=True):
        assert {k: got[k] for k in FIELDS} == {k: want[k] for k in FIELDS}
        assert got["restored_from"] == "scenes_seg_accuracy.csv"
    assert not (runs / "kd" / "seed1" / "bench_result.json").exists()


def test_the_tables_teacher_must_be_the_one_on_disk(dense, tmp_path):
    table = dense.TABLES["segmentation"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    timed = dict(_record("teacher", 0, 52.72), wall_s=1161.0, cpu_s=2296.4)
    committed = _write(dense, table, runs, results, [timed, _record("ce", 0, 51.35)])
    shutil.rmtree(runs)
    t_dir = runs / f"teacher_{table.teacher}"
    t_dir.mkdir(parents=True)

    (t_dir / "bench_result.json").write_text(json.dumps(  # trained again: another teacher
        dict(_record("teacher", 0, 52.72), prev_miou=52.10, wall_s=1300.0)))
    with pytest.raises(SystemExit, match=r"on disk \(.*prev_miou 52\.10\) is not the teacher "
                                         r"of .*prev_miou 52\.47.*from another teacher"):
        dense.restore_finished(table, runs, committed)

    (t_dir / "bench_result.json").write_text(json.dumps(  # the same curve again
        dict(_record("teacher", 0, 52.72), wall_s=1300.0, threads="2")))
    dense.restore_finished(table, runs, committed)
    teacher, _ = dense.finished(table, runs)
    assert (teacher["wall_s"], teacher["cpu_s"]) == (1161.0, 2296.4)  # the table's record
    assert teacher["threads"] == "2"  # what the CSV does not hold stays


def _teacher_folder(path: Path, weights: bytes | None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("model: {student: seg_resnet20}\ndata: {name: scenes_seg}\n")
    (path / "metrics.csv").write_text("epoch,val_student_miou,val_student_pixel_acc,epoch_seconds"
                                      "\n1,50.0,88.0,60\n2,52.5,89.0,60\n")
    if weights is not None:
        (path / "teacher.safetensors").write_bytes(weights)
    return path


def test_a_published_teacher_is_adopted_and_published_again_bit_for_bit(dense, tmp_path):
    table = dense.TABLES["segmentation"]
    source = _teacher_folder(tmp_path / "published", b"weights")
    t_dir = tmp_path / "runs" / "teacher_seg_resnet20"
    dense.adopt_teacher(source, t_dir, table, "kdlab train recipes/scenes_seg/ce/seg_resnet20.yaml")
    assert dense.teacher_weights(t_dir) == t_dir / "teacher.safetensors"
    rec = json.loads((t_dir / "bench_result.json").read_text())
    assert (rec["best_miou"], rec["last_miou"], rec["prev_miou"], rec["last_pixel_acc"]) == (
        52.5, 52.5, 50.0, 89.0)

    again = tmp_path / "again"
    dense.publish_teacher(t_dir, again, kd=["kdlab-not-needed"])
    assert (again / "teacher.safetensors").read_bytes() == b"weights"
    assert dense.sha256(again / "teacher.safetensors") == hashlib.sha256(b"weights").hexdigest()
    assert {p.name for p in again.iterdir()} >= {"config.yaml", "metrics.csv",
                                                 "bench_result.json"}


def test_a_folder_without_teacher_weights_is_refused(dense, tmp_path):
    table = dense.TABLES["segmentation"]
    source = _teacher_folder(tmp_path / "run", None)
    with pytest.raises(SystemExit, match="no best.pt nor teacher.safetensors"):
        dense.adopt_teacher(source, tmp_path / "t", table, "cmd")

"""Every run that distils reports its teacher before training: the teacher's validation score
is printed, stored in metrics.csv, the checkpoint and report.md; an untrained teacher (chance
level) and a teacher below the student's first evaluation get a one-line warning; a resumed
run reuses the score; train.evaluate_teacher=false skips it."""

from __future__ import annotations

import math

import pytest

import kdlab
from conftest import tiny_staged
from kdlab.tasks.classification.datasets.synthetic import generate
from kdlab.training import teacher_check
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.metrics_log import read_csv

QUICK = {"batch_size": 32, "eval_batch_size": 64, "device": "cpu", "progress": "none",
         "method": "kd"}


@pytest.fixture(autouse=True)
def _no_curves(monkeypatch):
    monkeypatch.setattr("kdlab.training.report.plot_curves", lambda *a, **k: None)


@pytest.fixture(scope="module")
def data():
    (xt, yt), (xv, yv) = generate()
    return (xt[:128], yt[:128]), (xv[:64], yv[:64])


# --------------------------------------------------------------- the rules
def test_chance_level_is_one_over_k_plus_three_standard_deviations():
    level = teacher_check.chance_level("top1", 10, 64)
    assert level == pytest.approx(100 * (0.1 + 3 * math.sqrt(0.09 / 64)))  # 21.25
    assert teacher_check.chance_level("top1", 10, 10_000) == pytest.approx(10.9)
    assert teacher_check.chance_level("miou", 11, 64) is None  # no such level for mIoU / mAP
    scores = {"top1": 12.5, "top5": 50.0, "images": 64.0}
    assert "at chance level for 10 classes" in teacher_check.chance_warning(scores, "top1", 10)
    assert teacher_check.chance_warning({**scores, "top1": 40.0}, "top1", 10) is None
    assert teacher_check.below_student_warning({"top1": 40.0}, {"top1": 30.0}, "top1") is None
    warning = teacher_check.below_student_warning({"top1": 40.0}, {"top1": 45.5}, "top1")
    assert "45.50" in warning and "40.00" in warning
    assert teacher_check.describe(scores, "top1", resumed=False) == (
        "teacher: top-1 12.50, top-5 50.00 on the validation split (64 images)")


# --------------------------------------------------------------- a run
def test_an_untrained_teacher_is_reported_and_warned_about(data, tmp_path, capsys):
    out = tmp_path / "run"
    kdlab.distill(student=tiny_staged(seed=1), teacher=tiny_staged(seed=2), train=data[0],
                  val=data[1], epochs=2, out=out, **QUICK)
    captured = capsys.readouterr()
    shown = [line for line in captured.out.splitlines() if line.startswith("teacher: ")]
    assert len(shown) == 1 and "on the validation split (64 images)" in shown[0], captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("kdlab: warning:")]
    assert any("at chance level for 10 classes" in w for w in warnings), captured.err
    rows = read_csv(out / "metrics.csv")
    teacher = load_checkpoint(out / "last.pt")["teacher_scores"]
    assert all(r["teacher_top1"] == pytest.approx(teacher["top1"], abs=1e-4) for r in rows)
    report = (out / "report.md").read_text()
    assert f"| teacher (frozen, before training) | {teacher['top1']:.2f}" in report
    assert "## Warnings" in report and "at chance level" in report


def test_a_teacher_below_the_students_first_evaluation_is_warned_about(data, tmp_path, capsys,
                                                                      monkeypatch):
    real = teacher_check.teacher_scores

    def weak(*args, **kwargs):  # a teacher well above chance, yet below any trained student
        return {**real(*args, **kwargs), "top1": 0.0, "images": 0.0}

    monkeypatch.setattr(teacher_check, "teacher_scores", weak)
    kdlab.distill(student=tiny_staged(seed=1), teacher=tiny_staged(seed=2), train=data[0],
                  val=data[1], epochs=2, out=tmp_path / "run", **QUICK)
    err = capsys.readouterr().err
    assert err.count("the student's top-1") == 1, err  # after its first evaluation only


def test_a_resumed_run_reuses_the_score_and_the_check_can_be_turned_off(data, tmp_path, capsys,
                                                                       monkeypatch):
    calls = []
    real = teacher_check.teacher_scores
    monkeypatch.setattr(teacher_check, "teacher_scores",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    student, teacher = tiny_staged(seed=1), tiny_staged(seed=2)
    settings = dict(student=student, teacher=teacher, train=data[0], val=data[1],
                    out=tmp_path / "run", **QUICK)
    kdlab.distill(epochs=1, **settings)
    kdlab.distill(epochs=2, resume=True, **settings)
    assert len(calls) == 1
    assert "evaluated when the run started" in capsys.readouterr().out
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert rows[0]["teacher_top1"] == rows[1]["teacher_top1"]

    forwards = []
    teacher.register_forward_hook(lambda *_: forwards.append(1))
    kdlab.distill(student=tiny_staged(seed=1), teacher=teacher, train=data[0], val=data[1],
                  epochs=1, out=tmp_path / "off", evaluate_teacher=False,
                  max_steps_per_epoch=1, **QUICK)
    assert len(calls) == 1 and len(forwards) == 1  # the one training step only
    assert "teacher_top1" not in read_csv(tmp_path / "off" / "metrics.csv")[0]
    assert "teacher: " not in capsys.readouterr().out

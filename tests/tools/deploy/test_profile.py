"""`kdlab profile` and the teacher-vs-student table of a distillation's report.md.

Tiny runs on the synthetic data: a resnet20 teacher and a resnet8 KD student. The profile's
counts are checked against direct computations (parameters summed, FLOP of a linear layer,
activation bytes of a known chain, the size of a written safetensors file); latencies are
only checked to be positive numbers (tests never time anything).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.cli.commands.common import restore_run
from kdlab.tools.deploy.activation_memory import peak_activation_bytes
from kdlab.tools.deploy.profile_report import pareto_front
from kdlab.training.model_cost import forward_gflop, parameter_count, safetensors_bytes
from support.cli import error_of, recipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("profile")
    teacher = recipe(tmp, "teacher.yaml", model={"student": "resnet20"})
    assert main(["train", str(teacher), "--out", str(tmp / "teacher")]) == 0
    kd = recipe(tmp, "kd.yaml", method={"name": "kd"},
                model={"student": "resnet8", "teacher": "resnet20",
                       "teacher_checkpoint": str(tmp / "teacher" / "best.pt")})
    assert main(["distill", str(kd), "--out", str(tmp / "kd")]) == 0
    return tmp


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["network"]: r for r in csv.DictReader(f)}


def test_profile_writes_table_csv_and_plot_with_sane_numbers(runs, capsys):
    out = runs / "profile"
    assert main(["profile", str(runs / "kd"), "--out", str(out), "--batch", "4",
                 "--warmup", "0", "--repeats", "2", "--rounds", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert {"profile.md", "profile.csv", "profile.png", "onnx"} <= {p.name for p in out.iterdir()}
    rows = read_rows(out / "profile.csv")
    assert set(rows) == {"teacher", "kd"}  # the distillation brought its teacher along
    t, s = rows["teacher"], rows["kd"]
    assert (t["role"], s["role"], s["teacher"]) == ("teacher", "student", "teacher")
    for name, run in (("teacher", "teacher"), ("kd", "kd")):
        net = restore_run(runs / run, "best", [], load_data=False).distiller.exported()["student"]
        assert int(rows[name]["params"]) == sum(p.numel() for p in net.parameters())
        history = restore_run(runs / run, "best", [], load_data=False).history
        assert float(rows[name]["score"]) == pytest.approx(history[-1]["val_student_top1"])
    assert float(t["gflop"]) > float(s["gflop"]) > 0
    assert float(t["activation_mib"]) >= float(s["activation_mib"]) > 0
    assert float(t["size_mb"]) > float(s["size_mb"]) > 0
    for row in (t, s):  # a smoke check of the latency fields: positive, finite numbers
        for key in ("eager_b1_ms", "eager_batch_ms", "eager_images_per_s", "ort_b1_ms",
                    "ort_batch_ms", "ort_images_per_s", "onnx_mb"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0, key
        assert row["batch"] == "4" and row["threads"] == "1"
        assert "max abs difference logits" in row["onnx_check"]
    text = (out / "profile.md").read_text()
    assert "## Students vs their teachers" in text and "fewer parameters" in text
    assert "threads: CPU threads: 1" in text and "![score vs latency](profile.png)" in text
    assert "| teacher | teacher | resnet20 |" in printed


def test_profile_auto_threads_start_with_one_fewer_beside_a_busy_core(runs, capsys,
                                                                       monkeypatch):
    from support.cores import header, two_cores

    two_cores(monkeypatch, busy=1.0)
    assert main(["profile", str(runs / "kd"), "--no-timing", "--no-onnx"]) == 0
    assert f"threads: {header(1, busy=True)}" in capsys.readouterr().out


def test_a_teacher_given_as_a_run_is_profiled_once(runs, capsys):
    assert main(["profile", str(runs / "teacher"), str(runs / "kd"), "--no-timing",
                 "--no-onnx", "--out", str(runs / "once")]) == 0
    capsys.readouterr()
    rows = read_rows(runs / "once" / "profile.csv")
    assert list(rows) == ["teacher", "kd"]
    assert rows["teacher"]["role"] == "teacher" and rows["teacher"]["eager_b1_ms"] == ""
    assert not (runs / "once" / "profile.png").exists()  # no latency, nothing to plot


def test_a_teacher_from_a_safetensors_file_has_no_score(runs, capsys):
    weights = runs / "teacher.safetensors"
    assert main(["export", str(runs / "teacher"), "--out", str(weights)]) == 0
    kd = recipe(runs, "kd_st.yaml", method={"name": "kd"},
                model={"student": "resnet8", "teacher": "resnet20",
                       "teacher_checkpoint": str(weights)})
    assert main(["distill", str(kd), "--out", str(runs / "kd_st")]) == 0
    assert main(["profile", str(runs / "kd_st"), "--no-timing", "--no-onnx", "--out",
                 str(runs / "st")]) == 0
    capsys.readouterr()
    rows = read_rows(runs / "st" / "profile.csv")
    assert rows["teacher"]["model"] == "resnet20" and rows["teacher"]["score"] == ""
    assert rows["kd_st"]["teacher"] == "teacher"


def test_a_missing_teacher_checkpoint_is_a_note(runs, capsys, tmp_path):
    moved = tmp_path / "kd"
    (moved).mkdir()
    for name in ("best.pt", "config.yaml", "metrics.csv"):
        (moved / name).write_bytes((runs / "kd" / name).read_bytes())
    text = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(text.replace(str(runs / "teacher" / "best.pt"),
                                                    str(tmp_path / "gone.pt")))
    assert main(["profile", str(moved), "--no-timing", "--no-onnx"]) == 0
    printed = capsys.readouterr().out
    assert "is not here" in printed and "| kd | student | resnet8 |" in printed


def test_profile_refuses_bad_numbers(runs, capsys):
    assert "--batch, --repeats and --rounds" in error_of(capsys, "profile", str(runs / "kd"),
                                                          "--rounds", "0")


def test_the_distillation_report_ends_with_teacher_vs_student(runs):
    text = (runs / "kd" / "report.md").read_text()
    assert "## Teacher vs student (the deployed networks)" in text
    section = text.split("## Teacher vs student")[1]
    lines = [line for line in section.splitlines() if line.startswith(("| teacher |",
                                                                       "| student |"))]
    teacher, student = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    nets = {run: restore_run(runs / run, "best", [], load_data=False).distiller
            .exported()["student"] for run in ("teacher", "kd")}
    assert float(teacher[2].split()[0]) == pytest.approx(
        parameter_count(nets["teacher"]) / 1e6, abs=5e-4)
    assert float(student[2].split()[0]) == pytest.approx(parameter_count(nets["kd"]) / 1e6,
                                                         abs=5e-4)
    assert float(teacher[3]) > float(student[3]) > 0
    assert "- student vs teacher:" in text and "fewer parameters" in text


# --------------------------------------------------------------- the counts themselves
def test_counts_match_direct_computations(tmp_path):
    from safetensors.torch import save_file

    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    assert parameter_count(net) == 100 * 50 + 50 + 50 * 10 + 10
    assert forward_gflop(net, torch.randn(1, 100)) == pytest.approx(
        2 * (100 * 50 + 50 * 10) / 1e9)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "net.safetensors"))
    assert safetensors_bytes(net) == (tmp_path / "net.safetensors").stat().st_size


def test_peak_activation_bytes_of_a_known_chain():
    wide = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 50))
    # the linear's output and the ReLU's output are alive together
    assert peak_activation_bytes(wide, torch.randn(8, 100)) == 2 * 8 * 200 * 4
    inplace = nn.Sequential(nn.Linear(100, 200), nn.ReLU(inplace=True), nn.Linear(200, 50))
    # in place: one 8x200 map, then the 8x50 output beside it
    assert peak_activation_bytes(inplace, torch.randn(8, 100)) == 8 * 200 * 4 + 8 * 50 * 4


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (2.0, 70.0), (5.0, 90.0), (1.0, 79.0)]
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([(1.0, 50.0), (1.0, 50.0)]) == [0, 1]  # ties dominate neither
    assert pareto_front([(float("nan"), 1.0), (2.0, 1.0)]) == [1]


def test_networks_take_turns_in_rounds():
    """Each round gives every network its warm-up and timed calls before the next round."""
    from kdlab.tools.deploy.profile import Measured, Settings, time_in_rounds

    order: list[str] = []
    measured = [Measured({"network": n}, {"eager_b1_ms": lambda n=n: order.append(n),
                                          "eager_batch_ms": lambda n=n: order.append(n)})
                for n in "ab"]
    time_in_rounds(measured, Settings(batch=4, warmup=1, repeats=2, rounds=3))
    assert order == (["a"] * 6 + ["b"] * 6) * 3
    row = measured[0].row
    assert row["eager_images_per_s"] == pytest.approx(4000 / row["eager_batch_ms"])

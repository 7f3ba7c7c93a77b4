"""The main job's settings and its noise line (the end-to-end run is in test_cli.py)."""

from __future__ import annotations

import re
import statistics
from dataclasses import replace

import pytest

from kdlab.errors import UserError
from kdlab.tools.quickstart import (
    MEASURED_GAINS,
    MEASURED_SEEDS,
    QuickstartSettings,
    noise_line,
    quickstart,
    run_configs,
)


def _summaries(teacher: float, student: float, kd: float, fcfd: float) -> dict:
    values = {"teacher": teacher, "student": student, "kd": kd, "fcfd": fcfd}
    return {name: {"best_top1": v} for name, v in values.items()}


def test_teacher_trains_longer_and_every_run_ends_at_zero_learning_rate(tmp_path):
    s = QuickstartSettings(out=str(tmp_path), epochs=2, teacher_epochs=5)
    cfgs = run_configs(s)
    assert cfgs["teacher"].schedule.epochs == 5
    assert {cfgs[n].schedule.epochs for n in ("student", "kd", "fcfd")} == {2}
    for cfg in cfgs.values():  # a per-iteration linear decay: the last step's LR is ~0
        assert (cfg.schedule.name, cfg.schedule.power) == ("poly", 1.0)
    assert cfgs["kd"].model.teacher_checkpoint == str(tmp_path / "teacher" / "best.pt")


def test_the_runs_pin_the_settings_the_seed_table_was_measured_with(tmp_path):
    """benchmarks/results/quickstart_seeds.md ran KD at CE 1 + KL 1 and FCFD with the
    teacher's BN on running statistics and He-initialised bridges (kdlab's defaults then;
    the methods now default to the reference code's)."""
    cfgs = run_configs(QuickstartSettings(out=str(tmp_path)))
    kd, fcfd = cfgs["kd"].method, cfgs["fcfd"].method
    assert (kd["ce_weight"], kd["kd_weight"]) == (1.0, 1.0)
    assert (fcfd["teacher_bn"], fcfd["bridge_init"]) == ("eval", "kaiming")


def test_seed_reaches_every_run(tmp_path):
    cfgs = run_configs(QuickstartSettings(out=str(tmp_path), seed=7))
    assert {cfg.train.seed for cfg in cfgs.values()} == {7}


def test_noise_line_at_the_defaults_states_this_jobs_gains_and_the_measured_spread():
    line = noise_line(_summaries(90.0, 84.0, 86.5, 86.25), QuickstartSettings(seed=3))
    assert "KD +2.50, FCFD +2.25 points" in line
    assert f"over {MEASURED_SEEDS} seeds" in line
    for label in ("KD - alone", "FCFD - alone", "FCFD - KD"):
        mean, std = MEASURED_GAINS[label]
        z = abs(mean) / std
        assert f"{label} {mean:+.2f} ± {std:.2f} ({z:.1f} std from zero" in line
        assert (f"({z:.1f} std from zero, within noise)" in line) == (z < 2)
    assert "\n" not in line


def test_noise_line_with_other_settings_does_not_claim_a_measured_spread():
    line = noise_line(_summaries(90.0, 84.0, 83.0, 85.0), QuickstartSettings(epochs=5))
    assert "KD -1.00, FCFD +1.00 points" in line
    assert "measured for the default settings only" in line and "std from zero" not in line


def test_measured_spread_matches_the_committed_seed_table():
    """MEASURED_GAINS is what benchmarks/quickstart_seeds.py wrote for the defaults."""
    from pathlib import Path

    table = (Path(__file__).resolve().parents[2] / "benchmarks" / "results"
             / "quickstart_seeds.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", table,
                      re.M)
    assert len(rows) == MEASURED_SEEDS
    top1 = [tuple(float(v) for v in row[1:]) for row in rows]
    pairs = {"KD - alone": (2, 1), "FCFD - alone": (3, 1), "FCFD - KD": (3, 2)}
    for label, (a, b) in pairs.items():
        gains = [t[a] - t[b] for t in top1]
        assert MEASURED_GAINS[label] == pytest.approx(
            (statistics.fmean(gains), statistics.stdev(gains)), abs=0.006)
    assert "settings: the quickstart's defaults\n" in table


def test_zero_teacher_epochs_is_refused(tmp_path):
    with pytest.raises(UserError, match="--teacher-epochs"):
        quickstart(replace(QuickstartSettings(out=str(tmp_path)), teacher_epochs=0))


def _seed_script():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        return importlib.import_module("quickstart_seeds"), importlib.import_module("protocol")
    finally:
        sys.path.pop(0)


def test_seed_script_table_reads_back_into_the_measured_gains():
    """The table benchmarks/quickstart_seeds.py writes is the one the check above parses."""
    script, _ = _seed_script()
    recs = [{"seed": s, "threads": 2, "command": f"kdlab quickstart --seed {s}", "wall_s": 400.0,
             "load_before": "0.1 0.1 0.1", "load_after": "2.0 1.0 0.5", "teacher": 90.0 + s,
             "student": 84.0 + s / 2, "kd": 87.0 - s / 4, "fcfd": 86.5 + s / 3}
            for s in range(3)]
    table = script.report(recs, [])
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", table,
                      re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    gains = script.measured(recs)
    assert gains["KD - alone"] == (round(statistics.fmean([3.0, 2.25, 1.5]), 2),
                                   round(statistics.stdev([3.0, 2.25, 1.5]), 2))
    assert "settings: the quickstart's defaults\n" in table
    assert "defaults plus --epochs 5" in script.report(recs, ["--epochs", "5"])


def test_benchmark_command_runner_records_the_run_and_stops_on_failure():
    import sys

    _, protocol = _seed_script()
    out, ran = protocol.run_command([sys.executable, "-c", "print('hi')"], 1, "echo")
    assert out.strip() == "hi" and ran["wall_s"] >= 0 and "print" in ran["command"]
    with pytest.raises(SystemExit, match="boom failed"):
        protocol.run_command([sys.executable, "-c", "raise SystemExit(3)"], 1, "boom")


def test_benchmark_records_name_commands_without_machine_paths():
    _, protocol = _seed_script()
    assert protocol.portable("/w/.venv/bin/kdlab distill 'a b.yaml'") == "kdlab distill 'a b.yaml'"
    assert protocol.portable("/usr/bin/python3.11 -m kdlab train x") == "python -m kdlab train x"
    assert protocol.portable("kdlab bench --out runs/x") == "kdlab bench --out runs/x"
    assert protocol.portable("bash -c 'kdlab bench'") == "bash -c 'kdlab bench'"

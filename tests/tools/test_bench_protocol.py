"""benchmarks/protocol.py: an interrupted benchmark run continues from its last.pt."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

#: a stand-in for ``kdlab train``: records its arguments, adds epoch 3 to metrics.csv
FAKE_TRAINER = """
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index('--out') + 1])
out.mkdir(parents=True, exist_ok=True)
if '--resume' in sys.argv and (out / 'refuse').exists():
    print('kdlab: error: the recipe differs from the saved run', file=sys.stderr)
    sys.exit(2)
(out / 'argv.json').write_text(json.dumps(sys.argv[1:]))
saved = (50.0, 60.0) if '--resume' in sys.argv else ()
rows = [{'val_student_top1': v} for v in (*saved, 70.0)]
with (out / 'metrics.csv').open('w') as f:
    w = csv.DictWriter(f, fieldnames=['val_student_top1']); w.writeheader(); w.writerows(rows)
print('done')
"""


@pytest.fixture()
def protocol():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        return importlib.import_module("protocol")
    finally:
        sys.path.pop(0)


def _interrupted(run_dir: Path, history: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    torch.save({"format": "kdlab-run", "epoch": len(history) - 1, "history": history},
               run_dir / "last.pt")


def _run(protocol, run_dir: Path, threads: int = 1) -> tuple[dict, list[str]]:
    cmd = [sys.executable, "-c", FAKE_TRAINER, "train", "r.yaml", "--out", str(run_dir)]
    rec = protocol.run_one(cmd, run_dir, {"row": "kd", "seed": 0}, threads)
    return rec, json.loads((run_dir / "argv.json").read_text())


def test_a_run_with_saved_epochs_continues_and_adds_their_times(protocol, tmp_path):
    run = tmp_path / "kd" / "seed0"
    _interrupted(run, [{"epoch": 1, "epoch_seconds": 100.0, "epoch_cpu_seconds": 90.0},
                       {"epoch": 1, "iteration": 5, "val_student_top1": 1.0},  # eval-only row
                       {"epoch": 2, "epoch_seconds": 120.0, "epoch_cpu_seconds": 110.0}])
    rec, argv = _run(protocol, run)
    assert argv[-1] == "--resume" and rec["command"].endswith(str(run))  # as first run
    assert rec["resumed"] == {"after_epoch": 2, "wall_s": 220.0, "cpu_s": 200.0,
                              "cpu_from": "epoch_cpu_seconds"}
    assert 220.0 <= rec["wall_s"] < 240.0 and 200.0 <= rec["cpu_s"] < 220.0
    assert (rec["best_top1"], rec["last_top1"], rec["prev_top1"], rec["epochs_run"]) == (
        70.0, 70.0, 60.0, 3)
    assert json.loads((run / "bench_result.json").read_text())["resumed"]["after_epoch"] == 2
    assert "(load " in protocol.command_line(rec) and protocol.command_line(rec).endswith(
        f"interrupted after epoch 2, continued with --resume): `{rec['command']}`")


def test_epochs_saved_before_the_cpu_column_count_wall_time_per_thread(protocol, tmp_path):
    run = tmp_path / "kd" / "seed0"
    _interrupted(run, [{"epoch": 1, "epoch_seconds": 100.0, "cpu_threads": 2},
                       {"epoch": 2, "epoch_seconds": 50.0}])
    assert protocol.earlier_epochs(run, threads=1) == {
        "after_epoch": 2, "wall_s": 150.0, "cpu_s": 250.0, "cpu_from": "epoch_seconds x threads"}


@pytest.mark.parametrize("left", ["nothing saved", "unreadable last.pt"])
def test_a_run_without_a_saved_epoch_starts_again_from_scratch(protocol, tmp_path, left):
    run = tmp_path / "kd" / "seed0"
    run.mkdir(parents=True)
    (run / "stale.txt").write_text("from the interrupted attempt")
    if left == "unreadable last.pt":
        (run / "last.pt").write_bytes(b"not a checkpoint")
    rec, argv = _run(protocol, run)
    assert "--resume" not in argv and "resumed" not in rec
    assert not (run / "stale.txt").exists() and rec["epochs_run"] == 1


def test_a_run_kdlab_refuses_to_continue_starts_again(protocol, tmp_path, capsys):
    """Exit 2 (a user error, e.g. the recipe changed since): the saved epochs are dropped."""
    run = tmp_path / "kd" / "seed0"
    _interrupted(run, [{"epoch": 1, "epoch_seconds": 100.0, "epoch_cpu_seconds": 90.0}])
    (run / "refuse").write_text("")
    rec, argv = _run(protocol, run)
    assert "--resume" not in argv and "resumed" not in rec and rec["epochs_run"] == 1
    assert "cannot continue (kdlab: error: the recipe differs" in capsys.readouterr().out


def test_a_failure_other_than_a_refusal_ends_the_benchmark(protocol, tmp_path):
    run = tmp_path / "kd" / "seed0"
    cmd = [sys.executable, "-c", "raise SystemExit(1)", "--out", str(run)]
    with pytest.raises(SystemExit, match="kd seed 0 failed \\(1\\)"):
        protocol.run_one(cmd, run, {"row": "kd", "seed": 0}, 1)

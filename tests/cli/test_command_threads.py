"""The commands without a training loop (eval, export, analyze, cache-teacher) apply kdlab's
CPU thread policy before their work (docs/threads.md): the count ``train.threads`` asks for,
one fewer per core another process keeps busy at their start, printed as the header line of a
training run. No test here times anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from support.cli import recipe
from support.cores import header, two_cores


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A resnet8 trained 1 epoch of 2 steps on the synthetic data (train.threads: auto)."""
    tmp = tmp_path_factory.mktemp("threads")
    assert main(["train", str(recipe(tmp, "teacher.yaml")), "--out", str(tmp / "teacher")]) == 0
    return tmp / "teacher"


COMMANDS = ("eval", "export", "export torch-export", "analyze anisotropy", "cache-teacher")


def command_line(command: str, run: Path, tmp: Path) -> list[str]:
    """``command``'s arguments on the run ``run`` (its files written under ``tmp``)."""
    if command == "cache-teacher":
        kd = recipe(tmp, "kd.yaml", method={"name": "kd"},
                    model={"teacher": "resnet8", "teacher_checkpoint": str(run / "best.pt")})
        return ["cache-teacher", str(kd), "--views", "1", "--out", str(tmp / "c.kdcache")]
    return {
        "eval": ["eval", str(run), "--which", "last"],
        "export": ["export", str(run), "--which", "last", "--out", str(tmp / "s.safetensors")],
        "export torch-export": ["export", str(run), "--which", "last", "--format",
                                "torch-export", "--images", "2", "--out", str(tmp / "s.pt2")],
        "analyze anisotropy": ["analyze", "anisotropy", str(run), "--which", "last",
                               "--directions", "2", "--batches", "1", "--out", str(tmp / "a")],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("busy", [True, False])
def test_a_command_applies_the_thread_policy_and_says_so(command, busy, teacher, tmp_path,
                                                         monkeypatch, capsys):
    two_cores(monkeypatch, busy=1.0 if busy else 0.0)
    torch.set_num_threads(2)
    capsys.readouterr()
    assert main(command_line(command, teacher, tmp_path)) == 0
    printed = capsys.readouterr().out.splitlines()
    threads = 1 if busy else 2
    assert [line for line in printed if line.startswith("CPU threads:")] == [
        header(threads, busy)]
    assert torch.get_num_threads() == threads


def test_eval_follows_the_runs_train_threads(teacher, monkeypatch, capsys):
    two_cores(monkeypatch, busy=1.0)
    capsys.readouterr()
    assert main(["eval", str(teacher), "--which", "last", "--set", "train.threads=2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("CPU threads: 2 (train.threads); OpenMP waits")
    assert torch.get_num_threads() == 2

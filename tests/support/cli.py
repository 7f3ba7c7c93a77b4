"""Helpers of the command-line tests: the real entry point in a fresh process, a tiny recipe,
one-line errors and the files a command leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from kdlab.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def kdlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point, ``python -m kdlab``, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "kdlab", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def recipe(tmp_path: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    """A tiny synthetic-data recipe: 1 epoch of 2 steps on CPU."""
    tree = {
        "data": {"name": "synthetic", "batch_size": 16, "eval_batch_size": 64},
        "model": {"student": "resnet8"},
        "method": {"name": "ce"},
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": "cpu", "max_steps_per_epoch": 2, "progress": "none",
                  "out_dir": str(tmp_path / "runs" / "default")},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def error_of(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlab: error:"), captured.err
    return lines[0]

"""Checkpoints: atomic writes, weights-only loading, clear errors for broken files, and a run
saved by the code before the layout move (format 2) resumes."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdlab.errors import UserError
from kdlab.training.checkpoint import FORMAT, load_checkpoint, plain, save_checkpoint
from kdlab.training.trainer import Trainer
from support.training import registered, tiny_config

#: a run folder (last.pt, config.yaml) written by kdlab before the layout of issue 24 (commit
#: c96fe1c): one epoch of tests/support/training.py's tiny CE run, 64 synthetic images
BEFORE_THE_MOVE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_v2"


def _state(value: float) -> dict:
    return {"format": "kdlab-run", "epoch": 3, "w": torch.full((4, 4), value),
            "nested": {"list": [1, 2.5, "a", None], "tuple": (1, 2)}}


def test_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1.0))
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["nested"]["tuple"] == [1, 2]
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(4, 4))


def test_plain_turns_counters_into_dicts(tmp_path):
    sched_state = {"milestones": Counter({150: 1, 180: 1}), "last_epoch": 0}
    assert type(plain(sched_state)["milestones"]) is dict
    save_checkpoint(tmp_path / "s.pt", {"scheduler": sched_state})
    assert torch.load(tmp_path / "s.pt", weights_only=True)["scheduler"]["milestones"] == {
        150: 1, 180: 1}


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # leave a truncated temp file, then fail
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp files left
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(4, 4))


def test_truncated_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1.0))
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("truncated.pt", "garbage.pt", "empty.pt"):
        with pytest.raises(UserError, match="cannot be read"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    torch.save({"obj": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "unsafe.pt")



def test_a_run_saved_before_the_layout_move_resumes(tmp_path):
    """A checkpoint of format 2 holds tensors and plain values only, so where the code that
    wrote it lived does not matter: the trainer loads every state (distiller strictly,
    optimiser, schedule) and trains the second epoch."""
    run = tmp_path / "run"
    shutil.copytree(BEFORE_THE_MOVE, run)
    saved = load_checkpoint(run / "last.pt")
    assert (saved["format"], saved["version"]) == (FORMAT, 2)
    cfg = tiny_config(run, data={"train_subset": 64, "val_subset": 32},
                      schedule={"name": "multistep", "epochs": 2, "milestones": [1],
                                "gamma": 0.1})
    with registered():
        summary = Trainer(cfg, resume=True).fit()
    resumed = load_checkpoint(run / "last.pt")
    assert summary["epochs"] == 2 and resumed["epoch"] > saved["epoch"]
    assert resumed["distiller"].keys() == saved["distiller"].keys()
    assert any(not torch.equal(resumed["distiller"][k], v)
               for k, v in saved["distiller"].items() if v.is_floating_point())

"""``train.channels_last: auto``: what it resolves to per device, its validation, and resuming
a run saved with an explicit layout."""

from __future__ import annotations

import pytest
import torch

from kdlab.core.config import save_config
from kdlab.errors import UserError
from kdlab.nn.layout import use_channels_last
from kdlab.training.resume import check_resume
from support.training import tiny_config


def test_auto_is_on_for_cpu_and_cuda_only():
    assert use_channels_last("auto", torch.device("cpu"))
    assert use_channels_last("auto", torch.device("cuda"))
    assert not use_channels_last("auto", torch.device("mps"))
    assert use_channels_last(False, torch.device("cpu")) is False
    with pytest.raises(UserError, match="auto, true or false"):
        use_channels_last("yes", torch.device("cpu"))
    assert tiny_config("x").train.channels_last == "auto"  # the default


def test_resume_compares_the_resolved_layout(tmp_path):
    save_config(tiny_config(tmp_path, train={"channels_last": False}), tmp_path / "config.yaml")
    with pytest.raises(UserError, match="train.channels_last False -> 'auto'"):
        check_resume(tiny_config(tmp_path), tmp_path)  # auto is on on a CPU: another layout
    assert check_resume(tiny_config(tmp_path, train={"channels_last": False}), tmp_path) == []
    save_config(tiny_config(tmp_path, train={"channels_last": True}), tmp_path / "config.yaml")
    notes = check_resume(tiny_config(tmp_path), tmp_path)  # the same layout on a CPU
    assert notes == ["train.channels_last True -> 'auto'"]


def test_a_bad_layout_setting_is_refused_before_the_run(tmp_path):
    from kdlab.training.trainer import Trainer

    with pytest.raises(UserError, match="train.channels_last 'yes' is not known"):
        Trainer(tiny_config(tmp_path / "r", train={"channels_last": "yes"})).fit()
    assert not (tmp_path / "r").exists()

"""docs/own-method.md runs as written: its code blocks make the ``lskd`` plugin folder; its
loss is the paper's formula computed directly; the method trains a few steps alone and as a
combo part; a setting outside its declared range is refused; and the page's two commands
train a teacher and distil with the plugin through the real command line (on a small
synthetic data set instead of Fashion-MNIST)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import sgd_descent, tiny_staged
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from support.guides import (
    ROOT,
    guide_commands,
    guide_files,
    imported_plugin,
    run_kdlab,
    write_guide_files,
)

GUIDE = "own-method.md"
#: the synthetic data set and a few steps instead of the recipes' Fashion-MNIST epochs
SMALL = ["data.name=synthetic", "data.batch_size=16", "data.eval_batch_size=64",
         "schedule.name=constant", "schedule.epochs=2", "train.max_steps_per_epoch=3",
         "train.device=cpu", "train.progress=none"]


def test_the_guide_names_its_files_and_commands():
    assert set(guide_files(GUIDE)) == {"lskd/__init__.py", "lskd/losses.py", "lskd/lskd.py"}
    commands = guide_commands(GUIDE)
    assert [c[:2] for c in commands] == [["kdlab", "train"], ["kdlab", "--import"]]
    assert "method.name=ls_kd" in commands[1]


@pytest.fixture
def lskd(tmp_path):
    write_guide_files(GUIDE, tmp_path)
    with imported_plugin(tmp_path, "lskd") as module:
        yield module


def _pair():
    return (tiny_staged(widths=(16, 32, 64, 64), seed=1),
            tiny_staged(widths=(8, 16, 32, 32), seed=2))


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 10, torch.arange(n)


def test_the_loss_is_kd_between_z_scored_logits(lskd):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 7, generator=g) * 4, torch.randn(5, 7, generator=g) + 2
    tau = 2.0
    want = 0.0
    for zs, zt in zip(s.double(), t.double(), strict=True):
        zs = (zs - zs.mean()) / (zs.std() + 1e-7)  # the unbiased std, as the authors' code
        zt = (zt - zt.mean()) / (zt.std() + 1e-7)
        p_t, log_p_s = torch.softmax(zt / tau, 0), torch.log_softmax(zs / tau, 0)
        want += float((p_t * (p_t.log() - log_p_s)).sum()) * tau**2 / len(s)
    got = lskd.losses.lskd_loss(s, t, tau)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the standardisation removes each row's shift and scale
    assert lskd.losses.lskd_loss(3 * s + 1, t - 5, tau).item() == pytest.approx(want, rel=1e-4)


def test_the_method_trains_alone_and_as_a_combo_part(lskd):
    for options, terms in (({}, {"ce", "kd"}),
                           ({"parts": [{"name": "ls_kd"}, {"name": "fitnet"}]},
                            {"ce", "kd", "hint"})):
        teacher, student = _pair()
        name = "combo" if options else "ls_kd"
        d = build_distiller(name, options, student, teacher, train_size=16).train()

        def inspect(step, logits, losses, terms=terms):
            assert set(losses) == terms

        totals = sgd_descent(d, _batch(), 6, lr=0.02, trainable_only=True, inspect=inspect)
        assert all(math.isfinite(v) for v in totals) and totals[-1] < totals[0], totals


def test_a_setting_outside_its_range_or_unknown_is_refused(lskd):
    teacher, student = _pair()
    cfg = build_distiller("ls_kd", {}, student, teacher).cfg
    assert (cfg.temperature, cfg.kd_weight, cfg.ce_weight) == (2.0, 9.0, 0.1)
    with pytest.raises(UserError, match=r"method\.ls_kd\.temperature must be (above|greater)"):
        build_distiller("ls_kd", {"temperature": 0.0}, student, teacher)
    with pytest.raises(UserError, match="tau"):
        build_distiller("ls_kd", {"tau": 2.0}, student, teacher)


@pytest.mark.slow
def test_the_guide_commands_train_a_teacher_and_distil_with_the_plugin(tmp_path):
    write_guide_files(GUIDE, tmp_path)
    sets = [a for s in SMALL for a in ("--set", s)]
    for command in guide_commands(GUIDE):
        args = [str(ROOT / a) if a.startswith("recipes/") else a for a in command[1:]]
        done = run_kdlab([*args, *sets], tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "fashion_mnist" / "ls_kd" / "resnet8_from_resnet20"
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(math.isfinite(float(r["loss_kd"])) and float(r["loss_kd"]) > 0 for r in rows)
    assert "ls_kd" in (run_dir / "config.yaml").read_text()
    assert "lskd" in (run_dir / "config.yaml").read_text()  # the plugin, recorded
    assert Path(run_dir / "best.pt").is_file()

"""DML (Zhang et al., CVPR 2018): peers, mutual KL against the formula, training steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import sgd_descent, tiny_staged
from kdlab.core.config import build_dataclass, load_config
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.dml.dml import DML
from kdlab.models import MODELS
from support.references import ref_kl


def _batch(student, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *student.input_shape, generator=g)
    targets = torch.randint(0, student.num_classes, (n,), generator=g)
    return images, targets


@pytest.fixture
def tiny_peer_models(monkeypatch):
    """Two tiny peer architectures in the model registry for the duration of a test."""
    def wide(*, num_classes, in_channels, input_size):
        return tiny_staged((12, 24, 48, 48), num_classes, in_channels, input_size, seed=5)

    def narrow(*, num_classes, in_channels, input_size):
        return tiny_staged((4, 8, 16, 16), num_classes, in_channels, input_size, seed=6)

    monkeypatch.setitem(MODELS._entries, "test_tiny_wide", wide)
    monkeypatch.setitem(MODELS._entries, "test_tiny_narrow", narrow)


def test_default_peer_is_a_fresh_copy_of_the_student(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("dml", {}, student, None)
    assert isinstance(d, DML) and DML.needs_teacher is False
    assert len(d.peers) == 1
    peer = d.peers[0]
    assert peer.stage_info == student.stage_info
    # same architecture, different (re-initialised) weights
    pairs = zip(student.parameters(), peer.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert list(d.evaluated()) == ["student", "peer1"]


def test_named_peers_and_mutual_kl_formula(tiny_pair, tiny_peer_models):
    _, student = tiny_pair
    d = build_distiller("dml", {"peers": ["test_tiny_wide", "test_tiny_narrow"]}, student, None)
    nets = d.evaluated()
    assert list(nets) == ["student", "peer1_test_tiny_wide", "peer2_test_tiny_narrow"]
    images, targets = _batch(student)
    logits, losses = d(images, targets)
    assert set(losses) == {
        "ce", "kl",
        "peer1_test_tiny_wide_ce", "peer1_test_tiny_wide_kl",
        "peer2_test_tiny_narrow_ce", "peer2_test_tiny_narrow_kl",
    }
    outs = [net(images) for net in nets.values()]
    torch.testing.assert_close(logits, outs[0])
    for k, name in enumerate(["", "peer1_test_tiny_wide_", "peer2_test_tiny_narrow_"]):
        others = [ref_kl(outs[k], outs[j], 1.0) for j in range(3) if j != k]
        assert losses[f"{name}kl"].item() == pytest.approx(sum(others) / 2, rel=1e-4)
        ce = torch.nn.functional.cross_entropy(outs[k], targets)
        torch.testing.assert_close(losses[f"{name}ce"], ce)


def test_each_peer_gets_only_its_own_loss_gradient(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("dml", {}, student, None)
    _, losses = d(*_batch(student))
    losses["kl"].backward()  # the student's mimicry loss: its targets are detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    assert all(p.grad is None for p in d.peers.parameters())


def test_every_peer_changes_and_loss_decreases(tiny_pair, tiny_peer_models):
    _, student = tiny_pair
    d = build_distiller("dml", {"peers": ["test_tiny_narrow"]}, student, None)
    before = [[p.detach().clone() for p in net.parameters()] for net in d.evaluated().values()]
    history = sgd_descent(d, _batch(student, n=8), 8)
    assert history[-1] < history[0]
    for old, net in zip(before, d.evaluated().values(), strict=True):
        assert any(not torch.equal(a, b) for a, b in zip(old, net.parameters(), strict=True))


def test_exported_lists_every_plain_network(tiny_pair, tiny_peer_models):
    _, student = tiny_pair
    d = build_distiller("dml", {"peers": ["test_tiny_wide"]}, student, None)
    exported = d.exported()
    assert list(exported) == ["student", "peer1_test_tiny_wide"]
    assert exported["student"] is student.net
    assert exported["peer1_test_tiny_wide"] is d.peers[0].net


def test_bad_settings_are_user_errors(tiny_pair):
    _, student = tiny_pair
    with pytest.raises(UserError):
        build_distiller("dml", {"peers": ["no_such_model_xyz"]}, student, None)
    with pytest.raises(UserError):
        build_distiller("dml", {"temperature": 0}, student, None)


RECIPES = sorted(Path(__file__).resolve().parents[3].glob("recipes/*/dml/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_is_valid(path):
    cfg = load_config(path)
    assert cfg.method_name == "dml"
    opts = build_dataclass(DML.Config, cfg.method_options, where="method.dml")
    assert len(opts.peers) >= 1 and opts.temperature == 1.0


def test_there_are_dml_recipes():
    assert any(p.parts[-3] == "fashion_mnist" for p in RECIPES)

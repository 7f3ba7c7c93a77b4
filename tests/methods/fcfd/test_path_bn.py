"""Path-aware BatchNorm (FCFD Sec. 2.3, Fig. 3): separate running statistics per path."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.methods.fcfd.path_bn import PathStats, batchnorms


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))


def test_use_swaps_statistics_and_restores_them():
    net = _net()
    stats = PathStats()
    stats.add_path("mixed", [net])
    bn = net[1]
    pure_mean = bn.running_mean
    net.train()
    with stats.use("mixed"):
        assert bn.running_mean is stats.paths["mixed"].bn0_running_mean
        net(torch.randn(8, 3, 5, 5) * 3 + 2)
    assert bn.running_mean is pure_mean
    assert torch.equal(pure_mean, torch.zeros(4))  # the pure statistics were not touched
    assert not torch.equal(stats.paths["mixed"].bn0_running_mean, torch.zeros(4))
    assert stats.paths["mixed"].bn1_num_batches_tracked.item() == 1
    assert bn.num_batches_tracked.item() == 0


def test_restores_after_an_exception():
    net = _net()
    stats = PathStats()
    stats.add_path("p", [net])
    before = [b.running_var for b in batchnorms([net])]
    try:
        with stats.use("p"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert [b.running_var for b in batchnorms([net])] == before


def test_mixing_statistics_changes_evaluation_path_aware_does_not():
    """Train-mode passes on pure and on shifted ('mixed path') inputs: sharing the running
    statistics changes the evaluated network; path-aware statistics leave it as trained on
    the pure path alone."""
    pure_x = [torch.randn(16, 3, 6, 6) for _ in range(5)]
    mixed_x = [torch.randn(16, 3, 6, 6) * 4 + 3 for _ in range(5)]
    probe = torch.randn(4, 3, 6, 6)

    def run(mode: str) -> torch.Tensor:
        net = _net()
        stats = PathStats()
        stats.add_path("mixed", [net])
        net.train()
        with torch.no_grad():
            for xp, xm in zip(pure_x, mixed_x, strict=True):
                net(xp)
                if mode == "shared":
                    net(xm)
                elif mode == "aware":
                    with stats.use("mixed"):
                        net(xm)
        net.eval()
        with torch.no_grad():
            return net(probe)

    pure_only = run("pure")
    assert not torch.allclose(run("shared"), pure_only, atol=1e-3)
    assert torch.equal(run("aware"), pure_only)


def test_statistics_are_checkpointed_buffers():
    net = _net()
    stats = PathStats()
    stats.add_path("a", [net])
    keys = set(stats.state_dict())
    assert "paths.a.bn0_running_mean" in keys and "paths.a.bn1_running_var" in keys
    assert not any(k.endswith("weight") for k in keys)  # affine weights stay shared
    assert len(batchnorms([net, net[1]])) == 2  # each BN once

"""Shared fixtures: tiny staged networks that build in milliseconds on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.models.staged.view import Staged

#: the whole suite (``pytest`` with no selection) must collect at least this many tests, so
#: that a broken import that leaves only a few modules cannot pass as green
MIN_SUITE_TESTS = 1000


def pytest_collection_finish(session: pytest.Session) -> None:
    cfg = session.config
    whole = (not cfg.args or cfg.args == ["tests"]) and not cfg.option.keyword \
        and not cfg.option.markexpr
    if whole and len(session.items) < MIN_SUITE_TESTS:
        raise pytest.UsageError(f"the suite collected {len(session.items)} tests, fewer than "
                                f"{MIN_SUITE_TESTS}: a test module failed to import or was lost")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with the suite's torch thread count: a trainer built in a test applies
    kdlab's thread policy (and its governor may lower it), and a float32 reduction sums in an
    order that depends on the number of threads."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def tiny_staged(widths=(8, 16, 32, 32), num_classes: int = 10, in_channels: int = 3,
                input_size: int = 16, seed: int = 0) -> Staged:
    """A 4-stage conv net (conv-BN-ReLU per stage; stages 2 and 3 halve the size)."""
    torch.manual_seed(seed)
    stages = nn.Sequential()
    c_in = in_channels
    for i, w in enumerate(widths):
        stride = 2 if i in (1, 2) else 1
        stages.add_module(f"s{i}", nn.Sequential(
            nn.Conv2d(c_in, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()))
        c_in = w
    net = nn.Sequential()
    net.add_module("body", stages)
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(c_in, num_classes))
    return Staged(net, stem=[], stages=[[f"body.s{i}"] for i in range(len(widths))],
                  classifier=["fc"], input_shape=(in_channels, input_size, input_size),
                  num_classes=num_classes)


def sgd_descent(distiller, inputs, steps: int, *, lr: float = 0.05, trainable_only=False,
                reseed=None, inspect=None) -> list[float]:
    """``steps`` SGD steps (momentum 0.9) of ``distiller`` on one batch ``inputs``; the summed
    loss of each step. Every loss term must be a finite scalar. ``trainable_only`` steps only
    parameters that require a gradient; ``reseed(step)`` is the torch seed set before a step
    (sampled choices repeat); ``inspect(step, logits, losses)`` runs after each backward,
    before the update."""
    params = [p for p in distiller.parameters() if p.requires_grad or not trainable_only]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    totals = []
    for step in range(steps):
        if reseed is not None:
            torch.manual_seed(reseed(step))
        logits, losses = distiller(*inputs)
        for term, value in losses.items():
            assert value.dim() == 0 and torch.isfinite(value), f"{term} = {value}"
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if inspect is not None:
            inspect(step, logits, losses)
        opt.step()
        totals.append(total.item())
    return totals


@pytest.fixture
def tiny_pair():
    """(teacher, student): same 4-stage layout, the teacher twice as wide."""
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1)
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    return teacher, student
